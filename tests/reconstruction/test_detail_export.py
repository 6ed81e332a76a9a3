"""HRN export: the detailed mesh and the 16-bit maps round-trip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from datamodules.detail import detail_layout
from networks.hrn import HRNDetail, HRNSettings
from reconstruction.detail_export import decode_signed_16bit, encode_signed_16bit, export_detail
from renderers.camera import PinholeCamera


def test_signed_16bit_round_trip():
    values = np.array([-0.1, -0.05, 0.0, 0.033, 0.1, 0.5])
    decoded = decode_signed_16bit(encode_signed_16bit(values, 0.1), 0.1)
    np.testing.assert_allclose(decoded[:5], values[:5], atol=0.1 / 65535 * 2)
    assert decoded[5] == 0.1, "values beyond the scale saturate"


def test_export_detail_writes_the_mesh_and_maps(ict_small, tmp_path):
    camera = PinholeCamera().resized(64, 64)
    layout = detail_layout(ict_small, 16, 32)
    net = HRNDetail(ict_small, layout, camera, HRNSettings(widths=(4, 8)))
    with torch.no_grad():
        torch.nn.init.normal_(net.displacement_net.out.weight, std=1.0)
        out = net(torch.rand(1, 3, 64, 64), ict_small.layout.zeros(1), backend="torch")
    paths = export_detail(tmp_path, ict_small, layout, out)
    assert all(p.is_file() for p in paths.values())
    obj = paths["mesh_obj"].read_text()
    n_vertices = sum(line.startswith("v ") for line in obj.splitlines())
    n_faces = sum(line.startswith("f ") for line in obj.splitlines())
    assert n_faces == 4 * ict_small.triangles.shape[0] and n_vertices > ict_small.n_vertices
    displacement = cv2.imread(str(paths["displacement"]), cv2.IMREAD_UNCHANGED)
    assert displacement.dtype == np.uint16 and displacement.shape == (32, 32)
    scales = json.loads(paths["scales"].read_text())
    np.testing.assert_allclose(
        decode_signed_16bit(displacement, scales["displacement"]), out.displacement[0, 0].numpy(), atol=1e-6
    )
    assert cv2.imread(str(paths["deformation"]), cv2.IMREAD_UNCHANGED).shape == (16, 16, 3)
