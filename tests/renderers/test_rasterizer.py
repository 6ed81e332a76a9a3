"""Rasterizer: agreement with a brute-force reference, depth/culling rules, chunking, gradients, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy.spatial import ConvexHull

from renderers.rasterizer import (
    Fragments,
    available_backends,
    interpolate,
    pytorch3d_backend,
    rasterize,
    torch_backend,
)

SIZE = (48, 48)


def reference_rasterize(
    screen: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], near: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pixel against every face in float64: (pix_to_face, bary, depth) like `rasterize`."""
    height, width = image_size
    screen = screen.double()
    tri = screen[:, faces]  # (B, F, 3, 3)
    x, y, z = tri.unbind(-1)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    px = xs.reshape(1, 1, -1).double()
    py = ys.reshape(1, 1, -1).double()

    def edge(a: int, b: int) -> torch.Tensor:  # (B, F, HW) twice the signed area of (v_a, v_b, p)
        xa, ya, xb, yb = x[..., a, None], y[..., a, None], x[..., b, None], y[..., b, None]
        return (xb - xa) * (py - ya) - (yb - ya) * (px - xa)

    areas = torch.stack([edge(1, 2), edge(2, 0), edge(0, 1)], dim=-1)  # opposite corners 0, 1, 2
    total = areas.sum(-1)
    drawable = (z.amin(-1) > near) & (total[..., 0] != 0)
    inside = (areas * total.sign().unsqueeze(-1) >= 0).all(-1) & drawable.unsqueeze(-1)
    weighted = areas / z.unsqueeze(-2)
    depth = total / weighted.sum(-1)
    depth = torch.where(inside, depth, math.inf)
    best_depth, best_face = depth.min(dim=1)  # (B, HW)
    covered = best_depth.isfinite()
    pix_to_face = torch.where(covered, best_face, -1)
    pick = best_face.unsqueeze(1).unsqueeze(-1).expand(-1, 1, -1, 3)
    bary = weighted.gather(1, pick).squeeze(1)
    bary = bary / bary.sum(-1, keepdim=True)
    bary = torch.where(covered.unsqueeze(-1), bary, 0.0)
    best_depth = torch.where(covered, best_depth, 0.0)
    batch = screen.shape[0]
    return (
        pix_to_face.view(batch, height, width),
        bary.view(batch, height, width, 3),
        best_depth.view(batch, height, width),
    )


def random_triangles(n: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unshared random triangles of mixed sizes in screen space (partly off-screen), depths in [1, 10]."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, n, 1, 2, generator=gen) * 68 - 10
    scale = torch.exp(torch.rand(batch, n, 1, 1, generator=gen) * math.log(40.0))  # 1 to 40 px
    xy = centres + (torch.rand(batch, n, 3, 2, generator=gen) - 0.5) * scale
    z = 1 + 9 * torch.rand(batch, n, 3, 1, generator=gen)
    screen = torch.cat([xy, z], dim=-1).reshape(batch, 3 * n, 3)
    return screen, torch.arange(3 * n).view(n, 3)


def icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sphere: (V, 3) vertices and (F, 3) faces, counter-clockwise seen from outside."""
    golden = (1 + 5**0.5) / 2
    corners = [(0.0, a, b * golden) for a in (-1, 1) for b in (-1, 1)]
    verts = [tuple(c / math.hypot(*v) for c in v) for p in corners for v in (p, p[1:] + p[:1], p[2:] + p[:2])]
    faces = []
    for a, b, c in ConvexHull(verts).simplices.tolist():  # the icosahedron's 20 faces, any winding
        normal = torch.linalg.cross(
            torch.tensor(verts[b]) - torch.tensor(verts[a]), torch.tensor(verts[c]) - torch.tensor(verts[a])
        )
        faces.append((a, b, c) if normal @ torch.tensor(verts[a]) > 0 else (a, c, b))
    for _ in range(subdivisions):
        midpoints: dict[tuple[int, int], int] = {}

        def midpoint(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoints:
                m = [(p + q) / 2 for p, q in zip(verts[a], verts[b])]
                verts.append(tuple(c / math.hypot(*m) for c in m))
                midpoints[key] = len(verts) - 1
            return midpoints[key]

        new_faces = []
        for a, b, c in faces:  # four children with the parent's winding
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)


def project(points: torch.Tensor, focal: float, centre: tuple[float, float]) -> torch.Tensor:
    """(..., 3) camera-space points (x right, y down, z depth) -> (..., 3) screen vertices."""
    x, y, z = points.unbind(-1)
    return torch.stack([focal * x / z + centre[0], focal * y / z + centre[1], z], dim=-1)


def sphere_screen(batch: int = 2, subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    verts, faces = icosphere(subdivisions)
    stretch = torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64)  # an ellipsoid: varied depths and sizes
    shifts = torch.tensor([[0.1, -0.2, 3.5], [-0.3, 0.2, 4.0]], dtype=torch.float64)[:batch]
    points = verts * stretch + shifts.unsqueeze(1)
    return project(points, 40.0, (24.0, 24.0)).float(), faces


def assert_matches_reference(screen, faces, image_size=SIZE, min_agreement=0.999, **kwargs) -> Fragments:
    fragments = rasterize(screen, faces, image_size, backend="torch", **kwargs)
    ref_face, ref_bary, ref_depth = reference_rasterize(screen, faces, image_size)
    covered = (fragments.pix_to_face >= 0) | (ref_face >= 0)
    agree = (fragments.pix_to_face == ref_face) & covered
    assert covered.sum() > 100
    assert agree.sum() / covered.sum() >= min_agreement
    torch.testing.assert_close(fragments.bary[agree].double(), ref_bary[agree], atol=1e-5, rtol=0)
    torch.testing.assert_close(fragments.depth[agree].double(), ref_depth[agree], atol=0, rtol=1e-5)
    assert (fragments.bary[~fragments.mask] == 0).all() and (fragments.depth[~fragments.mask] == 0).all()
    return fragments


def test_random_triangles_match_brute_force():
    screen, faces = random_triangles(300)
    assert_matches_reference(screen, faces)


def test_closed_mesh_matches_brute_force_and_is_watertight():
    screen, faces = sphere_screen()
    fragments = assert_matches_reference(screen, faces)
    # The silhouette of a closed surface has no holes: every pixel the reference covers is covered.
    ref_face, _, _ = reference_rasterize(screen, faces, SIZE)
    assert fragments.mask.sum() == (ref_face >= 0).sum()


def test_each_pixel_on_shared_edges_and_vertices_goes_to_one_face():
    # A grid whose vertices sit exactly on pixel centres and whose edges run through them: ties everywhere.
    n = 6
    ys, xs = torch.meshgrid(torch.arange(n) * 3 + 4.5, torch.arange(n) * 4 + 2.5, indexing="ij")
    screen = torch.stack([xs, ys, torch.full_like(xs, 2.0)], -1).reshape(1, -1, 3)
    ids = torch.arange(n * n).view(n, n)
    a, b, c, d = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    faces[::3] = faces[::3].flip(1)  # mixed windings must not matter
    union = rasterize(screen, faces, SIZE).mask
    per_face = sum(rasterize(screen, faces[k : k + 1], SIZE).mask.long() for k in range(len(faces)))
    assert (per_face == union.long()).all(), "a tie pixel was claimed by two faces or by none"
    # The closed box of the grid (edges included) minus its right and bottom borders is covered.
    expected = torch.zeros(SIZE, dtype=torch.bool)
    expected[4:19, 2:22] = True
    assert (union[0] == expected).all()


@pytest.mark.parametrize("front_first", [True, False])
def test_nearest_face_wins_whatever_the_face_order(front_first):
    front = [[8.0, 8.0, 2.0], [40.0, 10.0, 2.0], [20.0, 40.0, 2.0]]
    back = [[4.0, 4.0, 5.0], [44.0, 6.0, 5.0], [24.0, 44.0, 5.0]]
    screen = torch.tensor([front + back if front_first else back + front])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fragments = rasterize(screen, faces, SIZE)
    front_id = 0 if front_first else 1
    assert fragments.pix_to_face[0, 20, 20] == front_id
    assert fragments.pix_to_face[0, 7, 38] == 1 - front_id  # only the back face reaches there
    assert fragments.depth[0, 20, 20] == pytest.approx(2.0)
    assert fragments.depth[0, 7, 38] == pytest.approx(5.0)


def test_off_screen_faces_are_skipped_and_partly_visible_faces_clipped_to_the_image():
    screen = torch.tensor(
        [
            [
                [-30.0, -30.0, 3.0],
                [-10.0, -30.0, 3.0],
                [-20.0, -5.0, 3.0],
                [60.0, 10.0, 3.0],
                [90.0, 10.0, 3.0],
                [70.0, 30.0, 3.0],
                [-20.0, 20.0, 3.0],
                [30.0, 24.0, 3.0],
                [-10.0, 70.0, 3.0],
            ]
        ]
    )
    faces = torch.arange(9).view(3, 3)
    fragments = assert_matches_reference(screen, faces)
    assert set(fragments.pix_to_face.unique().tolist()) == {-1, 2}


def test_faces_reaching_behind_the_camera_are_culled():
    in_front = [[5.0, 5.0, 2.0], [40.0, 5.0, 2.0], [5.0, 40.0, 2.0]]
    partly_behind = [[10.0, 10.0, -1.0], [45.0, 12.0, 3.0], [12.0, 45.0, 3.0]]
    behind = [[0.0, 0.0, -2.0], [48.0, 0.0, -2.0], [0.0, 48.0, -2.0]]
    at_camera = [[0.0, 0.0, 0.0], [48.0, 0.0, 1.0], [0.0, 48.0, 1.0]]
    screen = torch.tensor([in_front + partly_behind + behind + at_camera])
    faces = torch.arange(12).view(4, 3)
    assert set(rasterize(screen, faces, SIZE).pix_to_face.unique().tolist()) == {-1, 0}
    # near is a depth threshold: raising it above 2 drops the front face as well.
    assert (rasterize(screen, faces, SIZE, near=2.5).pix_to_face == -1).all()


def test_empty_inputs_give_background():
    screen, faces = random_triangles(10, batch=3)
    for fragments in (
        rasterize(screen, faces[:0], (7, 9)),
        rasterize(screen + torch.tensor([500.0, 0.0, 0.0]), faces, (7, 9)),
        rasterize(screen, faces, (7, 9), near=100.0),
    ):
        assert fragments.pix_to_face.shape == (3, 7, 9) and fragments.bary.shape == (3, 7, 9, 3)
        assert (fragments.pix_to_face == -1).all() and (fragments.bary == 0).all() and (fragments.depth == 0).all()
        assert not fragments.mask.any()


def test_backface_culling_keeps_counter_clockwise_faces_in_the_image():
    ccw_in_image = [[10.0, 40.0, 2.0], [40.0, 40.0, 2.0], [25.0, 10.0, 2.0]]  # y grows downwards
    screen = torch.tensor([ccw_in_image + ccw_in_image[::-1]])
    shifted = screen.clone()
    shifted[0, 3:, 2] = 1.0  # the clockwise copy in front
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert rasterize(shifted, faces, SIZE).pix_to_face[0, 30, 25] == 1
    assert rasterize(shifted, faces, SIZE, cull_backfaces=True).pix_to_face[0, 30, 25] == 0


def test_backface_culling_hides_nothing_of_a_closed_outward_mesh():
    # Camera space is right-handed (x right, y down, z forward) like model space under our pose, so
    # outward counter-clockwise faces are front faces: culling must keep exactly the visible ones.
    screen, faces = sphere_screen()
    everything = rasterize(screen, faces, SIZE)
    assert torch.equal(rasterize(screen, faces, SIZE, cull_backfaces=True).pix_to_face, everything.pix_to_face)
    inside_out = rasterize(screen, faces.flip(1), SIZE, cull_backfaces=True)
    assert not torch.equal(inside_out.pix_to_face, everything.pix_to_face)  # now the far side shows


def test_chunking_blocking_and_repeated_runs_give_identical_results(monkeypatch):
    screen, faces = random_triangles(150)
    reference = rasterize(screen, faces, SIZE, max_pairs=1 << 20)
    runs = [
        rasterize(screen, faces, SIZE, max_pairs=7),
        rasterize(screen, faces, SIZE, max_pairs=1000),
        rasterize(screen, faces, SIZE, max_pairs=1 << 20),
    ]
    monkeypatch.setattr(torch_backend, "_CPU_BLOCK", 64)  # many small blocks of faces
    runs.append(rasterize(screen, faces, SIZE))
    for fragments in runs:
        assert torch.equal(fragments.pix_to_face, reference.pix_to_face)
        assert torch.equal(fragments.bary, reference.bary)
        assert torch.equal(fragments.depth, reference.depth)


def test_float64_input_matches_reference():
    screen, faces = sphere_screen(batch=1)
    assert_matches_reference(screen.double(), faces)


def _gradcheck_scene() -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    # Corners a quarter pixel off the centre lattice: no centre lies within 1e-6 px of an edge, so the
    # coverage is constant under gradcheck's perturbations.
    screen = torch.tensor(
        [[[1.25, 1.25, 2.0], [9.25, 2.25, 3.0], [2.25, 8.75, 2.5], [10.75, 9.25, 4.0]]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    return screen, faces, (11, 12)


def test_gradcheck_barycentrics_depth_and_interpolation():
    screen, faces, size = _gradcheck_scene()
    screen.requires_grad_(True)
    attributes = torch.rand(1, 4, 2, dtype=torch.float64, requires_grad=True)
    coverage = rasterize(screen, faces, size).pix_to_face
    assert (coverage == 0).sum() > 10 and (coverage == 1).sum() > 10

    def bary_and_depth(vertices):
        fragments = rasterize(vertices, faces, size)
        assert torch.equal(fragments.pix_to_face, coverage)
        return fragments.bary, fragments.depth

    def shaded(vertices, values):
        return interpolate(values, faces, rasterize(vertices, faces, size))

    assert torch.autograd.gradcheck(bary_and_depth, (screen,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(shaded, (screen, attributes), eps=1e-6, atol=1e-6)


def test_gradients_reach_x_y_depth_and_attributes():
    screen, faces = sphere_screen(batch=2)
    screen.requires_grad_(True)
    colors = torch.rand(2, screen.shape[1], 3, requires_grad=True)
    fragments = rasterize(screen, faces, SIZE)
    image = interpolate(colors, faces, fragments)
    (image.square().sum() + fragments.depth.sum()).backward()
    for name, grad in (
        ("x", screen.grad[..., 0]),
        ("y", screen.grad[..., 1]),
        ("depth", screen.grad[..., 2]),
        ("colours", colors.grad),
    ):
        assert grad.isfinite().all(), name
        assert grad.abs().sum() > 0, name


def test_interpolate_reproduces_linear_attributes():
    # Interpolating camera-space positions gives back the point seen at each pixel centre.
    verts, faces = icosphere(1)
    points = verts + torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    fragments = rasterize(project(points, 40.0, (24.0, 24.0)).unsqueeze(0), faces, SIZE)
    seen = interpolate(points.unsqueeze(0), faces, fragments)[fragments.mask]
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(48) + 0.5, indexing="ij")
    rays = torch.stack([(xs - 24) / 40, (ys - 24) / 40, torch.ones_like(xs)], -1).double()
    torch.testing.assert_close(seen, rays[fragments.mask[0]] * fragments.depth[fragments.mask].unsqueeze(-1))


def test_interpolate_without_the_covered_pixel_cache_gives_the_same_values_and_gradients():
    screen, faces = sphere_screen(batch=2)
    screen.requires_grad_(True)
    colors = torch.rand(2, screen.shape[1], 3, requires_grad=True)
    fragments = rasterize(screen, faces, SIZE)
    by_hand = Fragments(fragments.pix_to_face, fragments.bary, fragments.depth)
    rebuilt = dataclasses.replace(fragments, bary=fragments.bary * 1)  # the cache no longer matches
    assert fragments.covered_pixels() is not None
    assert by_hand.covered_pixels() is None and rebuilt.covered_pixels() is None
    results = []
    for frags in (fragments, by_hand, rebuilt):
        image = interpolate(colors, faces, frags)
        results.append((image, *torch.autograd.grad(image.square().sum(), (screen, colors), retain_graph=True)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b)


def test_backend_selection():
    assert available_backends()[0] == "torch"
    screen, faces = random_triangles(20)
    auto = rasterize(screen, faces, SIZE, backend="auto")  # CPU tensors: always the portable backend
    assert torch.equal(auto.pix_to_face, rasterize(screen, faces, SIZE, backend="torch").pix_to_face)


def test_pytorch3d_backend_agrees_with_portable_backend():
    pytest.importorskip("pytorch3d")
    triangles, triangle_faces = random_triangles(120, batch=2, seed=3)
    sphere, sphere_faces = sphere_screen()
    scenes = [  # non-square images both ways: PyTorch3D's NDC scales by the shorter side
        (triangles * torch.tensor([1.0, 0.75, 1.0]), triangle_faces, (36, 48)),
        (sphere * torch.tensor([1.1, 0.8, 1.0]), sphere_faces, (40, 56)),
        (sphere * torch.tensor([0.8, 1.1, 1.0]), sphere_faces, (56, 40)),
    ]
    for screen, faces, size in scenes:
        for cull in (False, True):
            ours = rasterize(screen, faces, size, backend="torch", cull_backfaces=cull)
            theirs = rasterize(screen, faces, size, backend="pytorch3d", cull_backfaces=cull)
            covered = ours.mask | theirs.mask
            agree = (ours.pix_to_face == theirs.pix_to_face) & covered
            assert covered.sum() > 100
            assert agree.sum() / covered.sum() >= 0.999
            torch.testing.assert_close(ours.bary[agree], theirs.bary[agree])
            torch.testing.assert_close(ours.depth[agree], theirs.depth[agree])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long), SIZE), {}, ValueError, r"\(B, V, 3\)"),
        ((torch.zeros(1, 5, 2), torch.zeros(1, 3, dtype=torch.long), SIZE), {}, ValueError, r"\(B, V, 3\)"),
        (
            (torch.zeros(1, 5, 3, dtype=torch.float16), torch.zeros(1, 3, dtype=torch.long), SIZE),
            {},
            TypeError,
            "float32 or float64",
        ),
        ((torch.zeros(1, 5, 3), torch.zeros(3, dtype=torch.long), SIZE), {}, ValueError, r"\(F, 3\)"),
        ((torch.zeros(1, 5, 3), torch.zeros(1, 3), SIZE), {}, TypeError, "int32 or int64"),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, 1, 5]]), SIZE), {}, ValueError, "V = 5"),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, -1, 2]]), SIZE), {}, ValueError, "V = 5"),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]), (0, 4)), {}, ValueError, "image_size"),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]), 48), {}, ValueError, "image_size"),
        (
            (torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]), SIZE),
            {"backend": "opengl"},
            ValueError,
            "unknown rasterizer backend 'opengl'",
        ),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]), SIZE), {"max_pairs": 0}, ValueError, "max_pairs"),
        ((torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]), SIZE), {"near": -1.0}, ValueError, "near"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        rasterize(*args, **kwargs)


def test_interpolate_rejects_mismatched_attributes():
    screen, faces = random_triangles(5)
    fragments = rasterize(screen, faces, SIZE)
    with pytest.raises(ValueError, match=r"\(B, V, C\)"):
        interpolate(torch.zeros(screen.shape[1], 3), faces, fragments)
    with pytest.raises(ValueError, match="one attribute row per screen vertex"):
        interpolate(torch.zeros(2, screen.shape[1] + 1, 3), faces, fragments)


def test_missing_pytorch3d_is_reported(monkeypatch):
    def unavailable():
        raise ImportError("No module named 'pytorch3d'")

    monkeypatch.setattr(pytorch3d_backend, "_import", unavailable)
    pytorch3d_backend.is_available.cache_clear()
    try:
        screen, faces = random_triangles(5)
        assert available_backends() == ["torch"]
        assert rasterize(screen, faces, SIZE, backend="auto").pix_to_face.shape == (2, *SIZE)
        with pytest.raises(ImportError, match="backend='torch'"):
            rasterize(screen, faces, SIZE, backend="pytorch3d")
    finally:
        pytorch3d_backend.is_available.cache_clear()
