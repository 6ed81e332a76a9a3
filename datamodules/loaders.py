"""What every DataModule here shares: the splits a Lightning stage needs, the worker count the machine can
give, the loader itself, and a hash split that always leaves something to validate on."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
"""The splits each Lightning stage reads; a stage of None (or unknown) reads them all."""
AUTO_WORKERS = -1
"""``num_workers`` value meaning "as many as the machine can spare" (`resolve_num_workers`)."""

T = TypeVar("T")


def stage_splits(stage: str | None) -> tuple[str, ...]:
    return STAGE_SPLITS.get(stage, SPLITS) if stage is not None else SPLITS


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS says, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_num_workers(requested: int, cpus: int | None = None) -> int:
    """DataLoader workers for a request: `AUTO_WORKERS` (-1) gives one per CPU but one (the main process
    trains), and any larger request is capped at that, with a warning, because more workers than spare
    cores only compete with training for them. 0 loads in the main process."""
    if requested < AUTO_WORKERS:
        raise ValueError(f"num_workers must be >= 0, or {AUTO_WORKERS} for one per spare CPU, got {requested}")
    cpus = available_cpus() if cpus is None else cpus
    spare = max(cpus - 1, 0)
    if requested == AUTO_WORKERS:
        return spare
    if requested > spare:
        warnings.warn(
            f"data.num_workers={requested} asks for more loader workers than this machine's {cpus} CPUs can "
            f"spare; using {spare} (set data.num_workers=-1 to follow the machine)",
            stacklevel=2,
        )
        return spare
    return requested


def check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1 or num_workers < AUTO_WORKERS:
        raise ValueError(
            f"batch_size must be >= 1 and num_workers >= 0 (or {AUTO_WORKERS} = auto), got {batch_size} and "
            f"{num_workers}"
        )


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, collate_fn: Callable
) -> DataLoader:
    """A DataLoader with the conventions of every DataModule here: a seeded shuffle, no last batch of one in a
    shuffled epoch, persistent workers, ``num_workers`` resolved against the machine (`resolve_num_workers`)."""
    workers = resolve_num_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        # A last batch of one breaks batch norm; skipping a remainder of a shuffled epoch loses nothing.
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
    )


def hash_fraction(key: str) -> float:
    """``key`` re-hashed (so any hex or non-hex key works), its first 8 bytes read as a fraction of 2^64."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def split_by_hash(
    items: Sequence[T], key: Callable[[T], str], val_fraction: float, what: str
) -> tuple[list[T], list[T]]:
    """(train, val): an item is held out when `hash_fraction` of its key is below ``val_fraction``, so the
    split is stable when items are added or removed. When that leaves no validation item although
    ``val_fraction`` > 0 (a handful of items), the item closest to the threshold is held out, with a warning,
    so that validation (and the best checkpoint it selects) still runs; with fewer than two items nothing can
    be held out and the warning says so. Order is kept within each split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    scores = [hash_fraction(key(item)) for item in items]
    held = [score < val_fraction for score in scores]
    if val_fraction > 0 and not any(held):
        if len(items) < 2:
            warnings.warn(
                f"{len(items)} {what} cannot be split into training and validation: nothing is validated and "
                "no best checkpoint is kept; add more",
                stacklevel=2,
            )
        else:
            held[min(range(len(items)), key=scores.__getitem__)] = True
            warnings.warn(
                f"val_fraction={val_fraction} of {len(items)} {what} rounds to none; holding out one for validation",
                stacklevel=2,
            )
    train = [item for item, h in zip(items, held) if not h]
    val = [item for item, h in zip(items, held) if h]
    return train, val
