"""Triangle rasterization with hard visibility and differentiable barycentrics (the nvdiffrast model).

``rasterize`` finds the nearest face at each pixel centre (portable PyTorch backend, or PyTorch3D's
when installed) and recomputes perspective-correct barycentrics and depth with autograd, so gradients
reach the screen vertices; ``interpolate`` blends per-vertex attributes with them.
"""

from renderers.rasterizer.fragments import Fragments
from renderers.rasterizer.rasterize import available_backends, interpolate, rasterize

__all__ = ["Fragments", "available_backends", "interpolate", "rasterize"]
