"""Generated-once datasets: arrays rendered from a seed, cached as ``.npz`` under a key of their parameters.

`CachedGeneration` is the part the synthetic single-face data (`datamodules.synthetic`) and the synthetic
image sets (`datamodules.image_sets`) share: the key, the file name, reading a cache that matches, writing
one atomically, and generating at most once per object. The datasets say what to generate and how to
check a cache file against their parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pytorch_lightning.utilities import rank_zero_info


def write_arrays(path: Path, arrays: Any) -> None:
    """Save a dataclass of NumPy arrays as ``.npz``, one entry per field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a crash or a parallel run never leaves a torn file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.savez(handle, **{f.name: getattr(arrays, f.name) for f in dataclasses.fields(arrays)})
    os.replace(partial, path)


def read_arrays(path: Path, array_type: type) -> Any | None:
    """The ``array_type`` dataclass stored at ``path``, or None when the file is unreadable or incomplete."""
    try:
        with np.load(path) as data:
            return array_type(**{f.name: data[f.name] for f in dataclasses.fields(array_type)})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


class CachedGeneration:
    """Mixin for a dataset whose arrays are generated once (see the module docstring).

    The subclass sets ``cache_dir`` (a Path or None), ``array_type`` (the arrays' dataclass),
    ``self._arrays = None``, ``self._cache_key = None`` and ``self.generation_seconds = None`` in its
    ``__init__``, and defines ``generation_parameters()``, ``cache_stem()`` (the file name before the key),
    ``describe()`` (what is generated, for the log lines), ``matches(arrays)`` and ``generate()``.
    """

    array_type: type

    def cache_key(self) -> str:
        # Hashing the face model's buffers takes a moment for a full model; the parameters never change.
        if self._cache_key is None:
            text = json.dumps(self.generation_parameters(), sort_keys=True)
            self._cache_key = hashlib.sha256(text.encode()).hexdigest()[:20]
        return self._cache_key

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.cache_stem()}-{self.cache_key()}.npz"

    @property
    def arrays(self) -> Any:
        return self.materialise()

    def materialise(self) -> Any:
        """Generate the arrays (or read them from the cache) once; later calls return the stored arrays."""
        if self._arrays is not None:
            return self._arrays
        path = self.cache_path
        what = self.describe()
        if path is not None and path.is_file():
            arrays = read_arrays(path, self.array_type)
            if arrays is not None and self.matches(arrays):
                self._arrays = arrays
                rank_zero_info(f"read {what} from {path}")
                return arrays
            warnings.warn(
                f"cache {path} is unreadable or does not match its parameters; generating it again", stacklevel=2
            )
        rank_zero_info(f"generating {what}" + (f" (cached in {path})" if path else ""))
        start = time.perf_counter()
        arrays = self.generate()
        self.generation_seconds = time.perf_counter() - start
        pictures = len(arrays.images)
        rate = pictures / max(self.generation_seconds, 1e-9)
        rank_zero_info(f"generated {pictures} pictures in {self.generation_seconds:.1f} s ({rate:.1f} images/s)")
        if path is not None:
            write_arrays(path, arrays)
        self._arrays = arrays
        return arrays
