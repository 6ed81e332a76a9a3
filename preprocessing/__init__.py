"""Image preprocessing: face detection, 68 landmarks, 5-point alignment to 224 crops, skin masks.

* `preprocessing.skin`: Jones & Rehg skin / non-skin colour mixtures, ``skin_posterior``.
* `preprocessing.detect`: detector + 68-landmark backends (dlib HOG / MMOD, FAN, insightface).
* `preprocessing.align`: Deep3D-style scale + translation alignment onto a (5, 2) template.
* `preprocessing.pipeline`: ``prepare(images_dir, out_dir, config)``, cached, with a manifest.

Nothing is imported here so that importing one part does not load dlib, OpenCV and torch together.
"""
