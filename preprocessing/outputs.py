"""The files ``face3d prepare`` writes per image (crop, landmarks, skin mask) and its manifest of records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from preprocessing.image import ImageResult

MANIFEST_NAME = "manifest.jsonl"
CONFIG_NAME = "prepare_config.json"


def output_paths(relative: str) -> dict[str, str]:
    """Output files of one source, relative to the output folder (posix)."""
    return {
        "crop": f"crops/{relative}.png",
        "landmarks": f"landmarks/{relative}.npy",
        "skin": f"skin/{relative}.png",
    }


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(encoded.tobytes())


def write_outputs(out_dir: Path, relative: str, result: ImageResult) -> dict[str, str]:
    paths = output_paths(relative)
    _write_png(out_dir / paths["crop"], result.aligned.crop)
    landmarks_path = out_dir / paths["landmarks"]
    landmarks_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(landmarks_path, result.aligned.landmarks68.astype(np.float32))
    _write_png(out_dir / paths["skin"], np.round(result.skin * 255.0).astype(np.uint8))
    return paths


def manifest_record(
    relative: str,
    source: Path,
    digest: str,
    stat: os.stat_result | None,
    cfg_hash: str,
    detector_name: str,
    result: ImageResult,
    outputs: dict[str, str] | None,
    seconds: float,
) -> dict:
    record = {
        "source": relative,
        "source_path": str(source),
        "sha256": digest,
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "config_hash": cfg_hash,
        "detector": detector_name,
        "status": result.status,
        "reason": result.reason,
        "n_faces": result.n_faces,
        "outputs": outputs,
        "seconds": round(seconds, 4),
    }
    if result.image is not None:
        record.update(
            image_size=list(result.image.rgb.shape[:2]),
            source_mode=result.image.mode,
            exif_orientation=result.image.orientation,
            grayscale=result.image.grayscale,
        )
    if result.detection is not None:
        record.update(
            box=result.detection.box.as_list(),
            detector_score=result.detection.box.score,
            detected_by=result.detection.detector,
            detect_seconds=round(result.detection.seconds, 4),
        )
    if result.aligned is not None:
        record.update(
            transform=result.aligned.transform.tolist(),
            align_scale=result.aligned.scale,
            align_residual=result.aligned.residual,
            valid_fraction=float(result.aligned.valid.mean()),
        )
    return record


def read_manifest(path: Path) -> dict[str, dict]:
    """Records of a manifest.jsonl by source; unparsable lines are dropped (they will be recomputed)."""
    records = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            records[record["source"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return records


def write_manifest(path: Path, records: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(records[key], sort_keys=True) + "\n" for key in sorted(records)))
    os.replace(tmp, path)
