"""Photo-like looks: lights against analytic values, colouring ranges, the scene, sensor effects."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from datamodules.appearance import (
    APPEARANCE_GAP,
    GAMMA,
    AppearanceSettings,
    PictureLight,
    build_head_scene,
    camera_for_focal,
    degrade_picture,
    render_scene,
    sample_identity_look,
    sample_picture_light,
    shade_vertices,
    vertex_albedo,
)
from datamodules.synthetic import aligned_translation
from preprocessing.align import template_from_face_model
from renderers.camera import PinholeCamera, model_to_camera, project
from renderers.lighting import blinn_phong, hemisphere_ambient, lambert

SIZE = 64


@pytest.fixture(scope="module")
def scene(ict_small):
    return build_head_scene(ict_small)


def unit(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------- lights


def test_lambert_is_the_clamped_cosine():
    angles = torch.linspace(0.0, math.pi, 13, dtype=torch.float64)
    normals = torch.stack([torch.sin(angles), torch.zeros_like(angles), torch.cos(angles)], -1).unsqueeze(0)
    light = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    out = lambert(normals, light)[0]
    assert torch.allclose(out[:, 0], torch.cos(angles).clamp_min(0.0), atol=1e-12)
    assert torch.allclose(out[:, 1], torch.sin(angles).clamp_min(0.0), atol=1e-12)
    assert torch.all(out[angles > math.pi / 2, 0] == 0)


def test_hemisphere_ambient_blends_ground_to_sky():
    normals = unit([[[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    sky, ground = (
        torch.tensor([[0.6, 0.7, 0.9]], dtype=torch.float64),
        torch.tensor([[0.2, 0.1, 0.0]], dtype=torch.float64),
    )
    out = hemisphere_ambient(normals, sky, ground)[0]
    assert torch.allclose(out[0], sky[0]) and torch.allclose(out[1], ground[0])
    assert torch.allclose(out[2], (sky[0] + ground[0]) / 2)


def test_blinn_phong_peaks_at_the_mirror_direction_and_vanishes_behind():
    light = unit([[[1.0, 0.0, 1.0]]])
    view = unit([[[-1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    normals = unit([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    out = blinn_phong(normals, light, view, torch.tensor([20.0], dtype=torch.float64))[0, :, 0]
    assert out[0] == pytest.approx(1.0)
    half = unit([1.0, 0.0, 1.0 + math.sqrt(2.0)])
    assert out[1] == pytest.approx(float(half[2]) ** 20)
    behind = blinn_phong(unit([[[0.0, 0.0, -1.0]]]), light, unit([[[0.0, 0.0, 1.0]]]), torch.tensor([5.0]))
    assert float(behind.abs().max()) == 0.0


def test_shading_matches_the_analytic_lambert_value():
    albedo = torch.tensor([[[0.8, 0.5, 0.3], [0.8, 0.5, 0.3]]], dtype=torch.float64)
    normals = unit([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    vertices = torch.zeros(1, 2, 3, dtype=torch.float64)
    tilt = math.radians(30.0)
    light = PictureLight(
        directions=np.array([[math.sin(tilt), 0.0, math.cos(tilt)], [0.0, 0.0, 1.0]]),
        colours=np.array([[1.0, 0.9, 0.8], [0.0, 0.0, 0.0]]),
        sky=np.full(3, 0.2),
        ground=np.full(3, 0.2),
        shadow=False,
        specular=0.0,
        shininess=10.0,
        exposure=1.3,
        use_sh=False,
    )

    def shade(visibility: torch.Tensor) -> torch.Tensor:
        no_sh, specular = torch.zeros(1, 27, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        return shade_vertices(albedo, normals, vertices, [light], no_sh, specular, visibility, 10.0)[0]

    out = shade(torch.ones(1, 2, dtype=torch.float64))
    linear = albedo[0, 0] ** GAMMA
    lit = (1.3 * linear * (torch.tensor([1.0, 0.9, 0.8], dtype=torch.float64) * math.cos(tilt) + 0.2)) ** (1 / GAMMA)
    dark = (1.3 * linear * 0.2) ** (1 / GAMMA)  # facing away: ambient only, the light is clamped to zero
    assert torch.allclose(out[0], lit, atol=1e-12) and torch.allclose(out[1], dark, atol=1e-12)
    # A shadowed vertex keeps only the ambient.
    shadowed = shade(torch.zeros(1, 2, dtype=torch.float64))
    assert torch.allclose(shadowed[0], dark, atol=1e-12)


def test_light_draws_are_deterministic_and_in_range():
    settings = AppearanceSettings()
    lights = [sample_picture_light(np.random.default_rng(i), settings) for i in range(200)]
    again = sample_picture_light(np.random.default_rng(7), settings)
    assert np.array_equal(lights[7].directions, again.directions) and lights[7].shadow == again.shadow
    for light in lights:
        assert np.allclose(np.linalg.norm(light.directions, axis=1), 1.0)
        # The key light comes at most 100 degrees from the camera axis (a rim light), never from behind.
        assert light.directions[0, 2] >= math.cos(math.radians(100.0)) - 1e-9
        assert np.all(light.colours >= 0) and np.all(light.sky > 0)
    share = np.mean([light.use_sh for light in lights])
    assert 0.05 < share < 0.3  # sh_probability = 0.15
    # The number of draws does not depend on the settings, so later streams stay put.
    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        sample_picture_light(a, settings)
        sample_picture_light(
            b, dataclasses.replace(APPEARANCE_GAP, coloured_light_probability=1.0, fill_probability=1.0)
        )
        assert a.random() == b.random()


# ----------------------------------------------------------------------------------------- colouring


def test_albedo_stays_in_range_for_every_tone(scene):
    extreme = AppearanceSettings(blotch_strength=0.5, skin_grain=0.3, redness=(0.5, 0.5), facial_hair_probability=1.0)
    for settings in (AppearanceSettings(), extreme, APPEARANCE_GAP):
        for seed in range(12):
            albedo = vertex_albedo(scene.regions, sample_identity_look(np.random.default_rng(seed), settings), settings)
            assert albedo.shape == (scene.n_vertices, 3) and albedo.dtype == np.float32
            assert albedo.min() >= 0.0 and albedo.max() <= 1.0


def test_skin_tones_span_light_to_dark(scene):
    settings = AppearanceSettings()
    tones = [sample_identity_look(np.random.default_rng(s), settings).skin.mean() for s in range(300)]
    assert min(tones) < 0.25 and max(tones) > 0.75
    light = AppearanceSettings(skin_palette_range=(0.0, 0.0))
    assert min(sample_identity_look(np.random.default_rng(s), light).skin.mean() for s in range(50)) > 0.7
    # The number of draws does not depend on the settings.
    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        sample_identity_look(a, settings)
        sample_identity_look(b, dataclasses.replace(light, facial_hair_probability=1.0, hair_probability=0.0))
        assert a.random() == b.random()


def test_without_features_the_face_is_one_skin_colour(scene):
    plain = dataclasses.replace(APPEARANCE_GAP, skin_grain=0.0, brow_strength=(0.0, 0.0), facial_hair_probability=0.0)
    look = sample_identity_look(np.random.default_rng(0), plain)
    albedo = vertex_albedo(scene.regions, look, plain)
    regions = scene.regions
    face = np.zeros(scene.n_vertices, bool)
    face[: scene.n_face] = True
    face &= (regions["hair_height"] < 0.25) & (regions["temples"] == 0)
    assert np.allclose(albedo[face], np.clip(look.skin, 0, 1), atol=1e-6)
    assert (regions["lips"][face] > 0.5).sum() > 50  # the lips are among them
    # With the default settings the lips and brows differ from the skin.
    settings = AppearanceSettings(lip_strength=(0.9, 0.9), brow_strength=(0.9, 0.9))
    look = sample_identity_look(np.random.default_rng(0), settings)
    albedo = vertex_albedo(scene.regions, look, settings)
    lips, cheeks = albedo[regions["lips"] > 0.9].mean(0), albedo[face & (regions["red"] > 0.5)].mean(0)
    assert np.abs(lips - cheeks).max() > 0.05


def test_scene_regions_cover_eyes_cap_and_socket(scene, ict_small):
    regions = scene.regions
    head = scene.head
    assert np.all(regions["eye"][head.n_area : head.n_vertices] == 1) and not regions["eye"][: head.n_area].any()
    assert regions["cap"].sum() > 100 and regions["socket"].sum() > 8
    pupils = regions["iris_angle"][head.n_area : head.n_vertices] < 0.15
    assert 0 < pupils.sum() < 0.1 * (head.n_vertices - head.n_area)
    # Extra vertices are tied to head vertices with weights that sum to one.
    assert torch.allclose(scene.weights.sum(1), torch.ones(scene.weights.shape[0]))
    assert scene.n_vertices == head.n_vertices + scene.anchors.shape[0]


def test_scene_moves_with_the_face_model(scene, ict_small):
    coeffs = ict_small.layout.zeros(2).replace(
        identity=torch.randn(2, ict_small.layout.n_id), expression=torch.randn(2, ict_small.layout.n_exp)
    )
    vertices = scene.vertices(ict_small, coeffs.identity, coeffs.expression)
    assert vertices.shape == (2, scene.n_vertices, 3)
    assert torch.allclose(vertices[:, : ict_small.n_vertices], ict_small.shape(coeffs), atol=1e-6)
    rest = scene.vertices(ict_small, torch.zeros(1, ict_small.layout.n_id), torch.zeros(1, ict_small.layout.n_exp))
    assert torch.allclose(rest[0], scene.mean, atol=1e-6)


# ------------------------------------------------------------------------------------------ rendering


def render(ict_small, scene, settings, seed: int = 0, yaw_deg: float = 0.0, full: bool = True):
    camera = PinholeCamera().resized(SIZE, SIZE)
    coeffs = ict_small.layout.zeros(1).replace(angles=torch.tensor([[0.0, math.radians(yaw_deg), 0.0]]))
    coeffs = coeffs.replace(
        translation=aligned_translation(ict_small, coeffs, camera, template_from_face_model(ict_small, camera))
    )
    albedo = torch.from_numpy(
        vertex_albedo(scene.regions, sample_identity_look(np.random.default_rng(seed), settings), settings)
    )[None]
    light = sample_picture_light(np.random.default_rng(seed), settings)
    image, mask = render_scene(
        scene,
        ict_small,
        coeffs.identity,
        coeffs.expression,
        coeffs.angles,
        coeffs.translation,
        albedo,
        [light],
        coeffs.lighting,
        camera,
        auto_exposure=settings.auto_exposure,
        backend="torch",
    )
    return image[0], mask[0, 0], coeffs, camera


def test_full_head_has_no_holes_at_the_eyes(ict_small, scene):
    image, mask, coeffs, camera = render(ict_small, scene, AppearanceSettings())
    narrow = build_head_scene(ict_small, full_head=False)
    _, narrow_mask, _, _ = render(ict_small, narrow, AppearanceSettings())
    landmarks = ict_small.mean_shape[ict_small.landmark_ids] + coeffs.translation
    pixels = project(model_to_camera(landmarks, camera.camera_distance), camera)
    for ids in (range(36, 42), range(42, 48)):
        x, y = pixels[list(ids)].mean(0).long().tolist()
        assert mask[y, x] == 1 and narrow_mask[y, x] == 0
    assert mask.sum() > narrow_mask.sum() * 1.3  # ears, neck and hair too
    assert float(image.min()) >= 0.0 and torch.isfinite(image).all()


def test_cast_shadows_only_darken(ict_small, scene):
    # Without auto-exposure: a camera metering the face would brighten the shadowed picture.
    settings = AppearanceSettings(
        sh_probability=0.0,
        shadow_probability=1.0,
        key_azimuth_deg=(70.0, 80.0),
        key_elevation_deg=(30.0, 40.0),
        auto_exposure=0.0,
    )
    lit, _, _, _ = render(ict_small, scene, dataclasses.replace(settings, shadow_probability=0.0))
    shadowed, mask, _, _ = render(ict_small, scene, settings)
    darker = (lit - shadowed).sum(0)
    assert float(darker.min()) >= -1e-5
    assert float((darker > 0.05).float().sum()) > 10  # the nose or the brow ridge casts a visible shadow


def test_focal_camera_keeps_the_face_size():
    camera = PinholeCamera().resized(SIZE, SIZE)
    wide = camera_for_focal(camera, 0.5)
    point = torch.tensor([[0.5, 0.3, 0.0]])
    for cam in (camera, wide):
        assert torch.allclose(
            project(model_to_camera(point, cam.camera_distance), cam),
            project(model_to_camera(point, camera.camera_distance), camera),
            atol=1e-4,
        )
    # Off the origin's plane the perspective differs: the nose (closer) grows more in the wide view.
    nose = torch.tensor([[0.5, 0.3, 1.0]])
    centre = torch.tensor(camera.principal_point)
    near = (project(model_to_camera(nose, wide.camera_distance), wide) - centre).norm()
    far = (project(model_to_camera(nose, camera.camera_distance), camera) - centre).norm()
    assert near > far * 1.05


# -------------------------------------------------------------------------------------------- sensor


def test_degradation_is_deterministic_and_off_means_untouched():
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    off = AppearanceSettings(blur_probability=0.0, noise_std=(0.0, 0.0), jpeg_probability=0.0)
    assert np.array_equal(degrade_picture(image, np.random.default_rng(1), off), np.rint(image * 255).astype(np.uint8))
    on = AppearanceSettings(blur_probability=1.0, blur_sigma_px=(7.0, 7.0), jpeg_probability=1.0, jpeg_quality=(20, 20))
    a = degrade_picture(image, np.random.default_rng(1), on)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, degrade_picture(image, np.random.default_rng(1), on))
    # Blur smooths: neighbouring pixels differ less than in the input.
    assert np.abs(np.diff(a.astype(float), axis=1)).mean() < np.abs(np.diff(image * 255, axis=1)).mean() / 2
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    degrade_picture(image, a, off)
    degrade_picture(image, b, on)
    assert a.random() == b.random()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="look"):
        AppearanceSettings(look="cartoon")
    with pytest.raises(ValueError, match="shadow_probability"):
        AppearanceSettings(shadow_probability=2.0)
    with pytest.raises(ValueError, match="focal_scale"):
        AppearanceSettings(focal_scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="jpeg_quality"):
        AppearanceSettings(jpeg_quality=(0, 50))


def test_auto_exposure_brings_dark_and_light_faces_closer(ict_small, scene):
    def mean_face(settings, tone):
        settings = dataclasses.replace(
            settings, skin_palette_range=(tone, tone), sh_probability=0.0, exposure=(1.0, 1.0)
        )
        image, mask, _, _ = render(ict_small, scene, settings)
        return float(image.mean(0)[mask > 0].mean())

    for strength in (0.0, 0.7):
        settings = AppearanceSettings(auto_exposure=strength)
        dark, light = mean_face(settings, 7.0), mean_face(settings, 0.0)
        assert light > dark
        if strength == 0.0:
            ratio_off = light / dark
    assert light / dark < ratio_off


def test_indoor_backgrounds_are_muted_deterministic_and_varied():
    from datamodules.backgrounds import draw_background, indoor_background

    first = indoor_background(np.random.default_rng(2), 48, 40)
    assert first.shape == (48, 40, 3) and first.dtype == np.float32 and 0.0 <= first.min() and first.max() <= 1.0
    assert np.array_equal(first, draw_background(np.random.default_rng(2), 48, 40, "indoor"))
    others = [indoor_background(np.random.default_rng(s), 48, 40) for s in range(5)]
    assert min(np.abs(a - b).mean() for i, a in enumerate(others) for b in others[i + 1 :]) > 0.01
    with pytest.raises(ValueError, match="background style"):
        draw_background(np.random.default_rng(0), 8, 8, "beach")


def test_side_light_comes_from_the_requested_side_without_fill():
    from datamodules.appearance import side_light

    light = sample_picture_light(np.random.default_rng(0), AppearanceSettings(sh_probability=1.0))
    for side in (-1.0, 1.0):
        lit = side_light(light, side)
        assert np.sign(lit.directions[0, 0]) == side and abs(lit.directions[0, 0]) > 0.9
        assert lit.shadow and not lit.use_sh and np.all(lit.colours[1] == 0)
        assert np.all(lit.sky < light.sky)


def test_scene_moves_between_devices_without_copying_when_it_is_there(scene):
    assert scene.to("cpu") is scene
    assert scene.to(torch.device("cpu")).mean is scene.mean
