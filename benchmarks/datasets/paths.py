"""Where the licensed evaluation datasets live on this machine (they are never shipped).

A dataset's root folder is, in order of precedence:

1. the ``root`` argument of its ``open_*`` function;
2. the environment variable ``FACE3D_DATA_<NAME>`` (``FACE3D_DATA_MICC``, ``FACE3D_DATA_FACEWAREHOUSE``,
   ``FACE3D_DATA_BU3DFE``, ``FACE3D_DATA_NOW``);
3. the key ``<name>`` (lower case) of ``benchmarks/datasets/paths.yaml``, a file each user writes::

       micc: /data/MICC/florence
       facewarehouse: /data/FaceWarehouse
       bu3dfe: /data/BU-3DFE
       now: /data/NoW_Dataset/final_release_version

A dataset with no configured root, or whose root does not exist, is skipped: its ``open_*`` function
returns an `Opened` with ``dataset=None`` and a one-line note saying why. A root that exists but is not
laid out as documented raises `DatasetFormatError` naming the offending file or folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from benchmarks.datasets.io import DatasetFormatError

PATHS_FILE = Path(__file__).with_name("paths.yaml")
ENV_PREFIX = "FACE3D_DATA_"

T = TypeVar("T")


@dataclass(frozen=True)
class Opened(Generic[T]):
    """Result of opening a dataset: the dataset, or None and a one-line note on why it was skipped.

    dataset: the dataset object, or None when skipped
    note:    one line: where it was found, or why it was skipped
    """

    dataset: T | None
    note: str

    def __bool__(self) -> bool:
        return self.dataset is not None


def env_var(name: str) -> str:
    """Environment variable naming a dataset's root, e.g. ``FACE3D_DATA_BU3DFE`` for "bu3dfe"."""
    return ENV_PREFIX + "".join(c for c in name.upper() if c.isalnum())


def locate(
    name: str,
    root: str | Path | None = None,
    *,
    paths_file: str | Path | None = PATHS_FILE,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path | None, str]:
    """(root folder or None, one-line note) for dataset ``name`` (see the module docstring).

    Raises `DatasetFormatError` when ``paths_file`` exists but is not a mapping of names to paths.
    """
    environ = os.environ if environ is None else environ
    variable = env_var(name)
    if root is not None:
        candidate, source = Path(root), "argument"
    elif environ.get(variable):
        candidate, source = Path(environ[variable]), variable
    else:
        configured = _from_paths_file(name, paths_file)
        if configured is None:
            where = f" or {paths_file}" if paths_file is not None else ""
            return None, f"{name}: skipped, no root configured (set {variable}{where})"
        candidate, source = configured, str(paths_file)
    candidate = candidate.expanduser()
    if not candidate.is_dir():
        return None, f"{name}: skipped, {candidate} (from {source}) is not a folder"
    return candidate, f"{name}: {candidate} (from {source})"


def _from_paths_file(name: str, paths_file: str | Path | None) -> Path | None:
    if paths_file is None or not Path(paths_file).is_file():
        return None
    try:
        content = yaml.safe_load(Path(paths_file).read_text())
    except yaml.YAMLError as error:
        raise DatasetFormatError(f"{paths_file}: not valid YAML ({error})") from error
    if content is None:
        return None
    if not isinstance(content, dict):
        raise DatasetFormatError(
            f"{paths_file}: expected a mapping of dataset names to folders, got {type(content).__name__}"
        )
    for key, value in content.items():
        if str(key).lower() == name.lower():
            if not isinstance(value, (str, Path)):
                raise DatasetFormatError(f"{paths_file}: the path of {key!r} must be a string, got {value!r}")
            return Path(value)
    return None


def open_dataset(
    name: str,
    build: Callable[..., T],
    root: str | Path | None = None,
    *,
    paths_file: str | Path | None = PATHS_FILE,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Opened[T]:
    """Locate dataset ``name`` (``root``, else ``FACE3D_DATA_<NAME>``, else ``paths.yaml``) and ``build(found_root,
    **options)`` it (the dataset class and its keyword options); skipped (dataset None, a one-line note) when not
    configured or absent. Each dataset module binds its name and class: ``open_micc(root, scan_names=...)``."""
    found, note = locate(name, root, paths_file=paths_file, environ=environ)
    if found is None:
        return Opened(None, note)
    dataset = build(found, **options)
    return Opened(dataset, f"{note}, {len(dataset)} samples")
