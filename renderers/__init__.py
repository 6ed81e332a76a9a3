"""Camera, lighting and rasterization: everything between face-model vertices and image pixels."""
