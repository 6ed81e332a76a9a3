"""Inference: photos -> 3D face reconstructions (meshes, textures, coefficients, pose, overlays).

* `reconstruction.fit`: analysis-by-synthesis fitting of coefficients with the hybrid loss (no network).
* `reconstruction.export`: writers for one reconstruction (OBJ / PLY / textured OBJ, npz / Deep3D .mat,
  landmarks, pose JSON, overlay PNG).
* `reconstruction.pipeline`: ``reconstruct_images(paths, out_dir, predictor)`` from image files to those
  outputs, with a per-image status report.

Nothing is imported here, so that using one part does not load the others (or Lightning: a trained
R-Net checkpoint is opened only by `reconstruction.pipeline.RNetPredictor`).
"""
