"""Plain geometry shared by every layer above it: mesh normals, similarity (Umeyama) fits, array checks and
mesh files. It imports nothing from the project, so the face model, the renderers, the metrics and the
benchmarks can all use it."""
