"""Length units of the reconstruction outputs (the face models and the coefficients work in decimetres)."""

UNIT_SCALES = {"mm": 100.0, "dm": 1.0}
"""Output length units -> factor from the models' decimetres."""
GLB_SCALE = 0.1
"""Decimetres -> metres, glTF's unit."""
