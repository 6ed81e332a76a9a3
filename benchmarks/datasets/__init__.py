"""Loaders for the licensed evaluation datasets (never shipped): MICC Florence, FaceWarehouse, BU-3DFE and
the NoW validation split, plus the NoW prediction exporter. Roots come from an argument,
``FACE3D_DATA_<NAME>`` or ``benchmarks/datasets/paths.yaml`` (see `paths`); a missing dataset is skipped
with a one-line note, a malformed one raises `DatasetFormatError` naming the file."""

from benchmarks.datasets.bu3dfe import BU3DFE, BU3DFESample, open_bu3dfe
from benchmarks.datasets.facewarehouse import (
    FaceWarehouse,
    FaceWarehouseRegions,
    FaceWarehouseSample,
    load_regions,
    open_facewarehouse,
)
from benchmarks.datasets.io import DatasetFormatError, Mesh, read_mesh, read_obj, read_pp, read_wrl
from benchmarks.datasets.micc import MICCFlorence, MICCSample, open_micc
from benchmarks.datasets.now import (
    NoWImage,
    NoWSample,
    NoWScan,
    NoWValidation,
    export_model_prediction,
    export_prediction,
    missing_predictions,
    open_now,
    read_face_box,
)
from benchmarks.datasets.paths import Opened, env_var, locate

__all__ = [
    "BU3DFE",
    "BU3DFESample",
    "DatasetFormatError",
    "FaceWarehouse",
    "FaceWarehouseRegions",
    "FaceWarehouseSample",
    "MICCFlorence",
    "MICCSample",
    "Mesh",
    "NoWImage",
    "NoWSample",
    "NoWScan",
    "NoWValidation",
    "Opened",
    "env_var",
    "export_model_prediction",
    "export_prediction",
    "load_regions",
    "locate",
    "missing_predictions",
    "open_bu3dfe",
    "open_facewarehouse",
    "open_micc",
    "open_now",
    "read_face_box",
    "read_mesh",
    "read_obj",
    "read_pp",
    "read_wrl",
]
