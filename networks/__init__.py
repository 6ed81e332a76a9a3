"""Neural networks: the R-Net backbone, C-Net and frozen face-recognition feature extractors (plain PyTorch)."""
