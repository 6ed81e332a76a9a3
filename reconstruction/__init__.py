"""Inference: photos -> 3D face reconstructions (meshes, textures, coefficients, pose, overlays).

* `reconstruction.fit`: analysis-by-synthesis fitting of coefficients with the hybrid loss (no network).
* `reconstruction.export`: everything written for one reconstruction (meshes through `geometry.mesh_io`, the UV
  texture of `reconstruction.uv_texture`, npz / Deep3D .mat of `reconstruction.coefficient_io`, landmarks and
  pose JSON of `reconstruction.pose_io`, overlay PNG).
* `reconstruction.pipeline`: ``reconstruct_images(paths, out_dir, predictor)`` from image files to those
  outputs, with a per-image status report.

Nothing is imported here, so that using one part does not load the others. This package never imports
Lightning or the experiment configs: a trained R-Net checkpoint is opened by the entry point
(`experiments.build.load_rnet_checkpoint`) and handed in as a module.
"""
