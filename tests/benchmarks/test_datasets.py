"""Each loader against a tiny fixture in its dataset's real on-disk layout."""

from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import (
    DatasetFormatError,
    env_var,
    export_model_prediction,
    export_prediction,
    load_regions,
    locate,
    missing_predictions,
    open_bu3dfe,
    open_facewarehouse,
    open_micc,
    open_now,
    read_face_box,
    read_obj,
)
from metrics import NOW_LANDMARKS_68, now_scan_to_mesh

NO_CONFIG = {"environ": {}, "paths_file": None}


def face_grid(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A 6 x 6 vertex, 150 mm wide curved patch (face-sized) times ``scale``, and its triangles."""
    xs = np.linspace(-75.0, 75.0, 6)
    x, y = np.meshgrid(xs, xs)
    vertices = np.stack([x.ravel(), y.ravel(), 40.0 - (x.ravel() ** 2 + y.ravel() ** 2) / 300.0], 1)
    ids = np.arange(36).reshape(6, 6)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    return vertices * scale, np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


def write_obj_quads(path: Path, scale: float = 1.0) -> None:
    """The face grid as an OBJ with quads and v/vt references (FaceWarehouse and 3dMD style)."""
    vertices, _ = face_grid(scale)
    ids = np.arange(36).reshape(6, 6) + 1
    lines = [f"v {x} {y} {z}" for x, y, z in vertices] + ["vt 0.5 0.5"]
    lines += [
        f"f {a}/1 {b}/1 {d}/1 {c}/1"
        for a, b, c, d in zip(ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel())
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_wrl(path: Path) -> None:
    vertices, faces = face_grid()
    points = ",\n".join(f"{x} {y} {z}" for x, y, z in vertices)
    index = ", ".join(f"{a}, {b}, {c}, -1" for a, b, c in faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#VRML V2.0 utf8\nShape {{ geometry IndexedFaceSet {{\n"
        f" coord Coordinate {{ point [\n{points}\n] }}\n coordIndex [ {index} ]\n}} }}\n"
    )


def write_pp(path: Path, points: np.ndarray, names: list[str] | None = None) -> None:
    names = names or [str(i) for i in range(len(points))]
    body = "\n".join(f' <point x="{x}" y="{y}" z="{z}" active="1" name="{n}"/>' for (x, y, z), n in zip(points, names))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!DOCTYPE PickedPoints>\n<PickedPoints>\n <DocumentData>\n"
        f'  <DataFileName name="scan.obj"/>\n </DocumentData>\n{body}\n</PickedPoints>\n'
    )


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


# ---------------------------------------------------------------- locating datasets


def test_locate_prefers_argument_then_environment_then_paths_file(tmp_path):
    a, b, c = (tmp_path / name for name in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    paths_file = tmp_path / "paths.yaml"
    paths_file.write_text(f"MICC: {c}\nnow: {tmp_path / 'absent'}\n")
    environ = {"FACE3D_DATA_MICC": str(b)}
    assert locate("micc", a, paths_file=paths_file, environ=environ)[0] == a
    found, note = locate("micc", paths_file=paths_file, environ=environ)
    assert found == b and "FACE3D_DATA_MICC" in note
    found, note = locate("micc", paths_file=paths_file, environ={})
    assert found == c and "paths.yaml" in note
    found, note = locate("now", paths_file=paths_file, environ={})
    assert found is None and "absent" in note and "\n" not in note
    found, note = locate("bu3dfe", paths_file=paths_file, environ={})
    assert found is None and "FACE3D_DATA_BU3DFE" in note
    assert env_var("facewarehouse") == "FACE3D_DATA_FACEWAREHOUSE"


def test_malformed_paths_file_is_named(tmp_path):
    paths_file = tmp_path / "paths.yaml"
    paths_file.write_text("micc: [unclosed\n")
    with pytest.raises(DatasetFormatError, match="paths.yaml"):
        locate("micc", paths_file=paths_file, environ={})
    paths_file.write_text("- a list\n")
    with pytest.raises(DatasetFormatError, match="paths.yaml: expected a mapping"):
        locate("micc", paths_file=paths_file, environ={})


@pytest.mark.parametrize("opener", [open_micc, open_facewarehouse, open_bu3dfe, open_now])
def test_missing_datasets_are_skipped_with_a_note(opener, tmp_path):
    opened = opener(**NO_CONFIG)
    assert opened.dataset is None and not opened and opened.note.count("\n") == 0 and "skipped" in opened.note
    opened = opener(tmp_path / "not_there", **NO_CONFIG)
    assert opened.dataset is None and "not_there" in opened.note


# ---------------------------------------------------------------- MICC Florence


@pytest.fixture
def micc_root(tmp_path) -> Path:
    root = tmp_path / "florence"
    write_obj_quads(root / "subject_01" / "Model" / "frontal1" / "obj" / "110920150452.obj")
    touch(root / "subject_01" / "Video" / "Indoor-Cooperative.mjpg")
    touch(root / "subject_01" / "Video" / "PTZ-Outdoor.mjpg")
    write_wrl(root / "subject_02" / "Model" / "frontal1" / "vrml" / "110920152011.wrl")
    write_pp(root / "subject_02" / "Model" / "frontal1" / "landmarks.pp", np.array([[0.0, 0.0, 40.0]]), ["nose_tip"])
    write_obj_quads(root / "subject_10" / "Model" / "frontal2" / "obj" / "120920150000.obj")
    return root


def test_micc_layout(micc_root, tmp_path):
    frames = tmp_path / "frames"
    touch(frames / "subject_01" / "Indoor-Cooperative" / "00002.jpg")
    touch(frames / "subject_01" / "Indoor-Cooperative" / "00001.jpg")
    opened = open_micc(environ={"FACE3D_DATA_MICC": str(micc_root)}, paths_file=None, frames_root=frames)
    assert opened and "2 samples" in opened.note
    dataset = opened.dataset
    assert dataset.subjects == ("subject_01", "subject_02", "subject_10")
    assert dataset.missing == ("subject_10/Model/frontal1",)
    first, second = list(dataset)
    assert first.subject == "subject_01" and first.scan_path.suffix == ".obj"
    assert first.vertices.shape == (36, 3) and first.faces.shape == (50, 3)
    assert set(first.videos) == {"Indoor-Cooperative", "PTZ-Outdoor"}
    assert [p.name for p in first.frames["Indoor-Cooperative"]] == ["00001.jpg", "00002.jpg"]
    assert first.landmarks is None and first.nose_tip() is None
    assert second.scan_path.suffix == ".wrl" and second.faces.shape == (50, 3)
    np.testing.assert_allclose(second.nose_tip(), [0.0, 0.0, 40.0])
    both = open_micc(micc_root, scan_names=("frontal1", "frontal2"), **NO_CONFIG).dataset
    assert len(both) == 3


def test_micc_malformed(micc_root, tmp_path):
    (micc_root / "subject_03" / "Model" / "frontal1").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="subject_03/Model/frontal1: no .obj or .wrl"):
        open_micc(micc_root, **NO_CONFIG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFormatError, match="no subject_XX folders"):
        open_micc(empty, **NO_CONFIG)
    broken = tmp_path / "broken"
    (broken / "subject_01" / "Model" / "frontal1" / "obj").mkdir(parents=True)
    (broken / "subject_01" / "Model" / "frontal1" / "obj" / "bad.obj").write_text("v 1 2\n")
    dataset = open_micc(broken, **NO_CONFIG).dataset
    with pytest.raises(DatasetFormatError, match="bad.obj"):
        list(dataset)
    (micc_root / "subject_03" / "Model" / "frontal1").rmdir()
    with pytest.raises(DatasetFormatError, match="110920150452.obj: .* not a face in millimetres"):
        list(open_micc(micc_root, unit_to_mm=1000.0, **NO_CONFIG).dataset)


# ---------------------------------------------------------------- FaceWarehouse


@pytest.fixture
def facewarehouse_root(tmp_path) -> Path:
    root = tmp_path / "FaceWarehouse"
    for tester in ("Tester_1", "Tester_2", "Tester_10"):
        for pose in range(2):
            poses = root / tester / "TrainingPose"
            write_obj_quads(poses / f"pose_{pose}.obj", scale=0.001)  # metres: "auto" must find 1000
            touch(poses / f"pose_{pose}.png")
        (root / tester / "TrainingPose" / "pose_0.land").write_text("3\n10 20\n30 40\n50 60\n")
    return root


def test_facewarehouse_layout(facewarehouse_root, tmp_path):
    dataset = open_facewarehouse(facewarehouse_root, poses=(0, 1), **NO_CONFIG).dataset
    assert dataset.subjects == ("Tester_1", "Tester_2", "Tester_10") and len(dataset) == 6
    samples = list(dataset)
    first = samples[0]
    assert (first.subject, first.pose, first.image_path.name) == ("Tester_1", 0, "pose_0.png")
    assert first.unit_to_mm == 1000.0 and first.faces.shape == (50, 3)
    np.testing.assert_allclose(np.ptp(first.vertices[:, 0]), 150.0)
    np.testing.assert_allclose(first.landmarks_2d, [[10, 20], [30, 40], [50, 60]])
    assert samples[1].landmarks_2d is None
    chosen = open_facewarehouse(
        facewarehouse_root, subjects=[10, "Tester_2"], poses=(1,), unit_to_mm=1000.0, **NO_CONFIG
    ).dataset
    assert [s.subject for s in chosen] == ["Tester_10", "Tester_2"]
    (tmp_path / "small.txt").write_text("0 1 2\n")
    np.save(tmp_path / "large.npy", np.arange(10))
    regions = load_regions(tmp_path / "small.txt", tmp_path / "large.npy")
    assert regions.small.tolist() == [0, 1, 2] and len(regions.large) == 10


def test_facewarehouse_malformed(facewarehouse_root):
    with pytest.raises(DatasetFormatError, match="Tester_7: requested subject folder is missing"):
        open_facewarehouse(facewarehouse_root, subjects=[7], **NO_CONFIG)
    with pytest.raises(DatasetFormatError, match="pose_2.obj: missing"):
        open_facewarehouse(facewarehouse_root, poses=(2,), **NO_CONFIG)
    (facewarehouse_root / "Tester_2" / "TrainingPose" / "pose_1.png").unlink()
    with pytest.raises(DatasetFormatError, match="Tester_2/TrainingPose/pose_1.png: missing image"):
        open_facewarehouse(facewarehouse_root, poses=(1,), **NO_CONFIG)
    with pytest.raises(ValueError, match="poses"):
        open_facewarehouse(facewarehouse_root, poses=(20,), **NO_CONFIG)


# ---------------------------------------------------------------- BU-3DFE


@pytest.fixture
def bu3dfe_root(tmp_path) -> Path:
    root = tmp_path / "BU-3DFE"
    for subject, race in (("F0001", "WH"), ("M0001", "AE")):
        folder = root / subject
        write_wrl(folder / f"{subject}_NE00{race}_F3D.wrl")
        touch(folder / f"{subject}_NE00{race}_F2D.bmp")
        touch(folder / f"{subject}_NE00{race}_F3D.bmp")
        write_wrl(folder / f"{subject}_HA01{race}_F3D.wrl")
        touch(folder / f"{subject}_HA01{race}_F2D.bmp")
    lines = [f"{i}\t\t{i * 0.5:.4f}\t{-i:.4f}\t{80 + i * 0.1:.4f}" for i in range(83)]
    (root / "F0001" / "F0001_NE00WH_F3D.bnd").write_text("\n".join(lines) + "\n")
    return root


def test_bu3dfe_layout(bu3dfe_root):
    dataset = open_bu3dfe(bu3dfe_root, **NO_CONFIG).dataset
    assert dataset.subjects == ("F0001", "M0001")
    female, male = list(dataset)
    assert (female.subject, female.expression, female.race) == ("F0001", "NE00", "WH")
    assert female.image_path.name == "F0001_NE00WH_F2D.bmp" and female.scan_path.name == "F0001_NE00WH_F3D.wrl"
    assert female.vertices.shape == (36, 3) and female.faces.shape == (50, 3)
    assert female.landmarks.shape == (83, 3)
    np.testing.assert_allclose(female.landmarks[2], [1.0, -2.0, 80.2])
    assert male.race == "AE" and male.landmarks is None
    happy = open_bu3dfe(bu3dfe_root, expression="HA01", **NO_CONFIG).dataset
    assert [s.expression for s in happy] == ["HA01", "HA01"]


def test_bu3dfe_malformed(bu3dfe_root):
    (bu3dfe_root / "M0001" / "M0001_NE00AE_F2D.bmp").unlink()
    with pytest.raises(DatasetFormatError, match="M0001_NE00AE_F2D.bmp: missing 2D image"):
        open_bu3dfe(bu3dfe_root, **NO_CONFIG)
    with pytest.raises(DatasetFormatError, match="F0001: no F0001_SU04<race>_F3D.wrl"):
        open_bu3dfe(bu3dfe_root, expression="SU04", **NO_CONFIG)
    bnd = bu3dfe_root / "F0001" / "F0001_HA01WH_F3D.bnd"
    bnd.write_text("0 1 2 3\n")
    with pytest.raises(DatasetFormatError, match="F0001_HA01WH_F3D.bnd: expected 83 points"):
        list(open_bu3dfe(bu3dfe_root, expression="HA01", **NO_CONFIG).dataset)


# ---------------------------------------------------------------- NoW

SUBJECTS = ("FaMoS_180424_03335_TA", "FaMoS_180426_03336_TA")
LINES = [
    f"{SUBJECTS[0]}/multiview_neutral/IMG_0101.jpg",
    f"{SUBJECTS[0]}/selfie/IMG_0102.jpg",
    f"{SUBJECTS[1]}/multiview_occlusions/IMG_0201.jpg",
]


@pytest.fixture
def now_root(tmp_path) -> Path:
    root = tmp_path / "NoW_Dataset" / "final_release_version"
    # The validation list sits one folder above the release folder in some downloads.
    (root.parent).mkdir(parents=True)
    (root.parent / "imagepathsvalidation.txt").write_text("\n".join(LINES) + "\n")
    for line in LINES:
        touch(root / "iphone_pictures" / line)
    box = root / "detected_face" / SUBJECTS[0] / "multiview_neutral" / "IMG_0101.npy"
    box.parent.mkdir(parents=True)
    np.save(box, {"left": 10.0, "top": 20.0, "right": 110.0, "bottom": 140.0}, allow_pickle=True)
    for subject in SUBJECTS:
        write_obj_quads(root / "scans" / subject / "natural_head_rotation.000001.obj")
        write_pp(
            root / "scans_lmks_onlypp" / subject / "natural_head_rotation.000001_picked_points.pp",
            np.arange(21, dtype=float).reshape(7, 3),
        )
    return root


def write_paths(root: Path) -> Path:
    paths_file = root.parent.parent / "paths.yaml"
    paths_file.write_text(f"now: {root}\n")
    return paths_file


def test_now_layout(now_root):
    dataset = open_now(environ={}, paths_file=write_paths(now_root)).dataset
    assert dataset.subjects == SUBJECTS and len(dataset) == 3
    samples = list(dataset)
    first = samples[0]
    assert (first.image.subject, first.image.challenge) == (SUBJECTS[0], "multiview_neutral")
    assert first.image.image_path == now_root / "iphone_pictures" / LINES[0]
    assert read_face_box(first.image.bbox_path) == (10.0, 20.0, 110.0, 140.0)
    assert samples[1].image.bbox_path is None
    assert first.scan.vertices.shape == (36, 3) and first.scan.landmarks.shape == (7, 3)
    assert samples[1].scan is first.scan  # one load per subject
    selfies = open_now(now_root, challenges=("selfie",), **NO_CONFIG).dataset
    assert [image.relative for image in selfies.images] == [LINES[1]]


def test_now_malformed(now_root):
    listing = now_root.parent / "imagepathsvalidation.txt"
    listing.write_text(LINES[0] + "\n" + f"{SUBJECTS[0]}/sideways/IMG_0001.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"imagepathsvalidation.txt:2: unknown challenge"):
        open_now(now_root, **NO_CONFIG)
    listing.write_text(f"{SUBJECTS[0]}/selfie/IMG_9999.jpg\n")
    with pytest.raises(DatasetFormatError, match="IMG_9999.jpg: listed in imagepathsvalidation.txt but missing"):
        open_now(now_root, **NO_CONFIG)
    listing.write_text("\n".join(LINES) + "\n")
    pp = now_root / "scans_lmks_onlypp" / SUBJECTS[1] / "natural_head_rotation.000001_picked_points.pp"
    write_pp(pp, np.zeros((6, 3)))
    dataset = open_now(now_root, **NO_CONFIG).dataset
    with pytest.raises(DatasetFormatError, match="picked_points.pp: expected NoW's 7 landmarks, found 6"):
        list(dataset)
    listing.unlink()
    with pytest.raises(DatasetFormatError, match="missing image list"):
        open_now(now_root, **NO_CONFIG)
    (now_root / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DatasetFormatError, match="bad.npy: expected a pickled dict"):
        read_face_box(now_root / "bad.npy")


def test_now_exporter_writes_the_evaluation_layout(tmp_path):
    vertices, faces = face_grid()
    landmarks = vertices[:7]
    obj_path, npy_path = export_prediction(tmp_path / "predictions", LINES[0], vertices, faces, landmarks)
    assert obj_path == tmp_path / "predictions" / SUBJECTS[0] / "multiview_neutral" / "IMG_0101.obj"
    assert npy_path == obj_path.with_suffix(".npy")
    np.testing.assert_allclose(read_obj(obj_path).vertices, vertices, atol=1e-6)
    np.testing.assert_allclose(np.load(npy_path), landmarks)
    assert missing_predictions(tmp_path / "predictions", LINES) == tuple(LINES[1:])
    with pytest.raises(ValueError, match=r"\(7, 3\)"):
        export_prediction(tmp_path, LINES[0], vertices, faces, landmarks[:5])


def test_exported_model_mesh_evaluates_to_zero_against_itself(ict_small, tmp_path):
    """End to end with the bundled face model: export (dm -> mm, 7 landmarks by id), read back as NoW's
    script would, evaluate against the same surface as a 'scan' posed elsewhere: the error vanishes."""
    mesh = ict_small.mean_shape.double()
    obj_path, npy_path = export_model_prediction(tmp_path, LINES[0], mesh, ict_small.triangles, ict_small.landmark_ids)
    exported = read_obj(obj_path)
    landmarks = np.load(npy_path)
    now_ids = ict_small.landmark_ids.numpy()[list(NOW_LANDMARKS_68)]
    np.testing.assert_allclose(landmarks, exported.vertices[now_ids], atol=1e-5)
    scan = exported.vertices[::3] * 1.1 + np.array([5.0, -3.0, 700.0])
    result = now_scan_to_mesh(
        scan, landmarks * 1.1 + np.array([5.0, -3.0, 700.0]), exported.vertices, exported.faces, landmarks
    )
    assert result.evaluated.sum() > 100 and result.stats.mean < 1e-3
