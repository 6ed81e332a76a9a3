"""Writers of one reconstruction: every file reads back with what was written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch
import trimesh
from PIL import Image

from face_model.model import FaceModel
from face_model.sampling import sample_coefficients
from geometry.mesh_io import split_uv_seams
from preprocessing.align import AlignedFace
from reconstruction.coefficient_io import DEEP3D_MAT_KEYS, load_coefficients, save_coefficients
from reconstruction.export import ExportOptions, write_reconstruction
from reconstruction.pipeline import make_reconstruction
from reconstruction.pose_io import crop_to_image
from reconstruction.uv_texture import bake_texture, ict_uv_layout
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer
from renderers.visualize import GEOMETRY_BACKGROUND

CROP = 64
# Source photo -> crop: the crop is the photo shrunk by 2 and shifted, as an alignment makes it.
TRANSFORM = np.array([[0.5, 0.0, -20.0], [0.0, 0.5, -12.0]])
SOURCE_SIZE = (200, 180)


def fake_aligned(landmarks: np.ndarray) -> AlignedFace:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (CROP, CROP, 3), dtype=np.uint8)
    return AlignedFace(
        crop=crop,
        valid=np.ones((CROP, CROP), bool),
        landmarks68=landmarks.astype(np.float32),
        five_points=np.zeros((5, 2), np.float32),
        transform=TRANSFORM,
        scale=0.5,
        residual=0.0,
    )


def reconstruct(model: FaceModel, seed: int = 0, overlay_size: int = 512):
    renderer = MeshRenderer(model, PinholeCamera().resized(CROP, CROP), backend="torch")
    coeffs = sample_coefficients(model.layout, 1, generator=torch.Generator().manual_seed(seed))
    coeffs = coeffs.replace(angles=coeffs.angles * 0.3)
    with torch.no_grad():
        detected = renderer.project_landmarks(coeffs)[0].numpy() + 1.0
    return make_reconstruction(renderer, coeffs, fake_aligned(detected), SOURCE_SIZE, overlay_size=overlay_size)


@pytest.fixture(scope="module")
def ict_recon(ict_small):
    return reconstruct(ict_small)


@pytest.fixture(scope="module")
def ict_uv(ict_small):
    layout = ict_uv_layout(ict_small.triangles.numpy(), ict_small.n_vertices)
    assert layout is not None
    return layout


@pytest.fixture(scope="module")
def written(tmp_path_factory, ict_recon, ict_uv):
    folder = tmp_path_factory.mktemp("recon")
    return write_reconstruction(folder, ict_recon, ExportOptions(texture_size=256), ict_uv), ict_recon


def load_mesh(path) -> trimesh.Trimesh:
    return trimesh.load(path, process=False)


def test_meshes_read_back_with_vertices_faces_and_colours(written):
    paths, recon = written
    expected_albedo = np.round(np.clip(recon.albedo, 0, 1) * 255).astype(np.uint8)
    expected_shaded = np.round(np.clip(recon.shaded, 0, 1) * 255).astype(np.uint8)
    for key, vertices, colours in (
        ("mesh_obj", recon.vertices_model, expected_albedo),
        ("mesh_ply", recon.vertices_model, expected_albedo),
        ("camera_obj", recon.vertices_camera, expected_shaded),
        ("camera_ply", recon.vertices_camera, expected_shaded),
    ):
        mesh = load_mesh(paths[key])
        assert mesh.vertices.shape == vertices.shape, key
        np.testing.assert_array_equal(mesh.faces, recon.triangles, err_msg=key)
        # Millimetres by default: the models work in decimetres.
        np.testing.assert_allclose(mesh.vertices, vertices * 100.0, atol=1e-3, err_msg=key)
        np.testing.assert_array_equal(mesh.visual.vertex_colors[:, :3], colours, err_msg=key)


def test_ascii_ply_and_decimetres(tmp_path, ict_recon):
    paths = write_reconstruction(tmp_path, ict_recon, ExportOptions(units="dm", ply_binary=False))
    assert paths["mesh_ply"].read_bytes().startswith(b"ply\nformat ascii 1.0\n")
    mesh = load_mesh(paths["mesh_ply"])
    np.testing.assert_allclose(mesh.vertices, ict_recon.vertices_model, atol=1e-5)
    assert "textured_obj" not in paths, "no UV layout was given"
    assert json.loads(paths["pose"].read_text())["units"] == "dm"


def test_export_options_validate_units():
    with pytest.raises(ValueError, match="units"):
        ExportOptions(units="inch")


def test_model_to_camera_and_intrinsics_agree_with_the_meshes_and_landmarks(written, ict_small):
    paths, recon = written
    pose = json.loads(paths["pose"].read_text())
    model = load_mesh(paths["mesh_obj"]).vertices
    camera = load_mesh(paths["camera_obj"]).vertices
    matrix = np.array(pose["model_to_camera"])
    np.testing.assert_allclose(model @ matrix[:3, :3].T + matrix[:3, 3], camera, atol=1e-3)

    table = np.loadtxt(paths["landmarks"])
    assert table.shape == (68, 8)
    points = camera[ict_small.landmark_ids.numpy()]
    for columns, key in ((slice(0, 2), "intrinsics_crop"), (slice(2, 4), "intrinsics_image")):
        projected = points @ np.array(pose[key]).T
        np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], table[:, columns], atol=2e-3)
    np.testing.assert_allclose(table[:, 4:6], recon.detected, atol=1e-3)
    np.testing.assert_allclose(table[:, 6:8], crop_to_image(recon.detected, TRANSFORM), atol=1e-3)
    # Crop pixel q = 0.5 p + t, so the source pixel is 2 (q - t).
    np.testing.assert_allclose(table[:, 2:4], 2.0 * (table[:, 0:2] - TRANSFORM[:, 2]), atol=1e-3)

    angles = recon.coeffs.angles[0].double().numpy()
    assert pose["angles_deg"]["yaw"] == pytest.approx(np.degrees(angles[1]))
    assert pose["image_size"] == list(SOURCE_SIZE)
    assert pose["camera"]["focal"] == pytest.approx(1015.0 * CROP / 224)
    assert pose["camera"]["camera_distance"] == pytest.approx(1000.0)
    assert pose["alignment"]["scale"] == pytest.approx(0.5)


def test_coefficients_npz_round_trip(written, ict_small):
    paths, recon = written
    coeffs, layout, name = load_coefficients(paths["coeffs_npz"])
    assert layout == ict_small.layout and name == "ict"
    for field in ("identity", "expression", "albedo", "angles", "lighting", "translation"):
        torch.testing.assert_close(getattr(coeffs, field), getattr(recon.coeffs, field).float())
    with np.load(paths["coeffs_npz"]) as data:
        np.testing.assert_allclose(data["flat"], layout.join(recon.coeffs)[0].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="one reconstruction"):
        save_coefficients(paths["coeffs_npz"], ict_small.layout.zeros(2), ict_small.layout, "ict")


def test_textured_obj_and_albedo_texture(written, ict_uv):
    paths, recon = written
    for key in ("textured_obj", "textured_mtl", "texture"):
        assert paths[key].is_file(), key
    assert "map_Kd albedo.png" in paths["textured_mtl"].read_text()
    mesh = load_mesh(paths["textured_obj"])
    assert mesh.vertices.shape[0] == recon.vertices_model.shape[0]
    assert mesh.visual.uv.shape == (mesh.vertices.shape[0], 2)
    texture = np.asarray(mesh.visual.material.image.convert("RGB"))
    assert texture.shape == (256, 256, 3)

    _, coverage = bake_texture(recon.albedo, recon.triangles, ict_uv, 256)
    assert 0.2 < coverage.mean() < 0.9, "the face chart covers a good part of the texture"
    skin = texture[coverage].astype(float)
    red, green, blue = skin.mean(axis=0)
    assert red > green > blue, f"skin is red-dominant, got mean RGB {red:.0f} {green:.0f} {blue:.0f}"
    assert 80 < red < 250


def test_overlay_is_four_panels_of_512_pixels(written):
    import cv2

    paths, recon = written
    overlay = cv2.cvtColor(cv2.imread(str(paths["overlay"])), cv2.COLOR_BGR2RGB)
    assert overlay.shape == (512, 4 * 512, 3)
    views = recon.views
    assert views.image.shape == views.geometry.shape == (512, 512, 3) and views.mask.shape == (512, 512)
    # The panels are the crop's view at 8x: the projected landmarks scale with it, and the grey geometry
    # covers the same pixels as the textured render (same pose) and is grey where it covers them.
    np.testing.assert_allclose(views.landmarks, recon.landmarks * 512 / CROP, atol=1e-3)
    np.testing.assert_allclose(views.detected, recon.detected * 512 / CROP, atol=1e-4)
    covered = np.any(views.geometry != np.array(GEOMETRY_BACKGROUND, np.uint8), axis=-1)
    assert (covered == views.mask).mean() > 0.99 and views.mask.mean() > 0.05
    face = views.geometry[views.mask].astype(int)
    assert np.abs(face[:, 0] - face[:, 1]).max() == 0 and np.abs(face[:, 1] - face[:, 2]).max() == 0
    assert face[:, 0].std() > 10  # shaded, not flat
    # Panel 3 of the file is the geometry alone; panel 1 the input (here the crop, enlarged).
    np.testing.assert_array_equal(overlay[100:, 2 * 512 : 3 * 512], views.geometry[100:])


def test_overlay_panel_size_follows_the_options(tmp_path, ict_small):
    recon = reconstruct(ict_small, overlay_size=96)
    paths = write_reconstruction(tmp_path, recon, ExportOptions(texture_size=16))
    import cv2

    assert cv2.imread(str(paths["overlay"])).shape == (96, 4 * 96, 3)
    with pytest.raises(ValueError, match="overlay_size"):
        ExportOptions(overlay_size=8)


def test_textured_glb_splits_seams_and_carries_the_texture(written, ict_uv):
    paths, recon = written
    scene = trimesh.load(paths["textured_glb"], process=False)
    (mesh,) = scene.geometry.values() if isinstance(scene, trimesh.Scene) else (scene,)
    vertex_ids, uv, faces = split_uv_seams(recon.triangles, ict_uv)
    # One vertex per distinct corner pair (the bundled face area is a single chart: one per mesh vertex).
    assert len(mesh.vertices) == len(vertex_ids) >= len(recon.vertices_model)
    np.testing.assert_allclose(mesh.vertices, recon.vertices_model[vertex_ids] * 0.1, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.visual.uv, uv, atol=1e-6)
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(image, np.asarray(Image.open(paths["texture"]).convert("RGB")))
    # The texture read at each vertex's UV (trimesh's own lookup) is that vertex's albedo: UVs and image rows agree.
    looked_up = np.asarray(mesh.visual.to_color().vertex_colors)[:, :3].astype(float)
    error = np.abs(looked_up - np.clip(recon.albedo[vertex_ids], 0, 1) * 255)
    assert np.median(error) < 2 and np.percentile(error, 95) < 8
    # Each split vertex's UV is a UV of its mesh vertex in the layout.
    pairs = zip(recon.triangles.ravel(), ict_uv.tri_uv.ravel())
    corners = {(int(v), tuple(np.round(ict_uv.uv[t], 6))) for v, t in pairs}
    assert all((int(v), tuple(np.round(u, 6))) in corners for v, u in zip(vertex_ids, uv))


def test_glb_loads_back_with_every_vertex_and_colour(written):
    paths, recon = written
    scene = trimesh.load(paths["mesh_glb"], process=False)
    (mesh,) = scene.geometry.values() if isinstance(scene, trimesh.Scene) else (scene,)
    assert len(mesh.vertices) == len(recon.vertices_model) and len(mesh.faces) == len(recon.triangles)
    # Metres (glTF's unit) from decimetres; the same triangles and 8-bit albedo colours.
    np.testing.assert_allclose(mesh.vertices, recon.vertices_model * 0.1, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, recon.triangles)
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(int)
    assert np.abs(colours - np.round(np.clip(recon.albedo, 0, 1) * 255)).max() <= 1


def fake_bfm(n_id: int = 80, n_exp: int = 64, n_tex: int = 80) -> FaceModel:
    """A BFM-layout model (Deep3D's 80/64/80 bases) on a small curved grid, named like load_bfm's."""
    side = 20
    ys, xs = np.meshgrid(np.linspace(0.8, -0.8, side), np.linspace(-0.7, 0.7, side), indexing="ij")
    zs = 0.6 * (1.0 - xs**2 - 0.5 * ys**2)
    mean = np.stack([xs, ys, zs], axis=-1).reshape(-1, 3)
    ids = np.arange(side * side).reshape(side, side)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    # Rows run downwards in y, so (a, c, b) and (b, c, d) are counter-clockwise seen from +z.
    triangles = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    rng = np.random.default_rng(1)
    n = len(mean)
    return FaceModel(
        mean_shape=torch.tensor(mean, dtype=torch.float32),
        id_basis=torch.tensor(rng.normal(0, 1e-3, (n_id, n, 3)), dtype=torch.float32),
        exp_basis=torch.tensor(rng.normal(0, 1e-3, (n_exp, n, 3)), dtype=torch.float32),
        albedo_mean=torch.full((n, 3), 0.6),
        albedo_basis=torch.tensor(rng.normal(0, 1e-3, (n_tex, n, 3)), dtype=torch.float32),
        triangles=torch.tensor(triangles),
        landmark_ids=torch.tensor(rng.choice(n, 68, replace=False)),
        skin_mask=torch.ones(n, dtype=torch.bool),
        name="bfm09",
    )


def test_bfm_reconstruction_writes_deep3d_mat(tmp_path):
    recon = reconstruct(fake_bfm())
    paths = write_reconstruction(tmp_path, recon)
    mat = scipy.io.loadmat(paths["coeffs_mat"])
    shapes = {key: mat[key].shape for key in DEEP3D_MAT_KEYS}
    assert shapes == {
        "id": (1, 80),
        "exp": (1, 64),
        "tex": (1, 80),
        "angle": (1, 3),
        "gamma": (1, 27),
        "trans": (1, 3),
        "lm68": (1, 68, 2),
    }
    np.testing.assert_allclose(mat["angle"][0], recon.coeffs.angles[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(mat["gamma"][0], recon.coeffs.lighting[0].numpy(), rtol=1e-6)
    # Deep3D's save_coeff: x as projected, y = H - 1 - y_deep3d, which is our y minus one.
    np.testing.assert_allclose(mat["lm68"][0], recon.landmarks - np.array([0.0, 1.0]), atol=1e-4)
    assert "textured_obj" not in paths
    assert load_mesh(paths["mesh_ply"]).vertices.shape == (400, 3)


def test_ict_reconstruction_has_no_deep3d_mat(written):
    paths, _ = written
    assert "coeffs_mat" not in paths


def test_monochrome_lighting_becomes_rgb_gamma(tmp_path):
    from reconstruction.coefficient_io import save_deep3d_mat

    model = fake_bfm(n_id=4, n_exp=3, n_tex=2)
    coeffs = model.layout.zeros(1).replace(lighting=torch.arange(9.0)[None])
    mat = scipy.io.loadmat(save_deep3d_mat(tmp_path / "c.mat", coeffs, np.zeros((68, 2))))
    np.testing.assert_array_equal(mat["gamma"][0], np.tile(np.arange(9.0), 3))
