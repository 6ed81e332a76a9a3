"""The R-Net that ships with the project: a weights file, its model card and the checksum that guards it.

Layout of a weights folder (``networks/weights/`` for the bundled one; `write_weights` makes others):

    rnet.pt        a plain ``torch.save`` dict: ``format`` (`FORMAT`), ``config`` (the training run's
                   experiment config as YAML text: it rebuilds face model, crop size and network) and
                   ``state_dict`` (R-Net's parameters and buffers, float16 or float32)
    rnet.json      the model card: data, steps, wall time, hardware, metrics, licences, and the file's SHA-256
    MODEL_CARD.md  the same card for people

`read_weights` refuses a file whose SHA-256 differs from its card's (a corrupt or modified copy) and says how
to restore it. The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
code runs. This module is plain PyTorch; turning the config text into a network is `experiments.build`'s job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from errors import InvalidInputError, MissingFileError

FORMAT = "face3d-rnet-weights/1"
WEIGHTS_NAME = "rnet.pt"
CARD_NAME = "rnet.json"
CARD_MARKDOWN_NAME = "MODEL_CARD.md"
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RNetWeights:
    """A weights folder's content.

    state_dict:  R-Net's parameters and buffers (``RNet.state_dict()`` keys), as stored (float16 or float32)
    config_yaml: the experiment config of the training run, YAML text
    card:        the model card (`CARD_NAME`), a JSON object
    path:        the weights file it came from
    """

    state_dict: dict[str, torch.Tensor]
    config_yaml: str
    card: dict
    path: Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (what ``git checkout --`` takes)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _restore_hint(path: Path) -> str:
    if path.resolve().is_relative_to(BUNDLED_DIR):
        return f"restore the shipped copy with `git checkout -- {_shown(path)}`"
    return "export it again with `face3d export-weights --ckpt CKPT --out DIR`"


def read_weights(directory: str | Path = BUNDLED_DIR) -> RNetWeights:
    """Read and verify the weights folder ``directory`` (default: the bundled R-Net).

    FileNotFoundError when the weights or the card are missing; ValueError when the file fails its SHA-256
    check or is not an R-Net weights file. Every message names the file and how to get a good copy.
    """
    directory = Path(directory)
    weights_path, card_path = directory / WEIGHTS_NAME, directory / CARD_NAME
    for path in (weights_path, card_path):
        if not path.is_file():
            if directory.resolve() == BUNDLED_DIR:
                raise MissingFileError(
                    f"the bundled R-Net is missing: {_shown(path)} not found. Restore it with `git checkout -- "
                    f"{_shown(directory)}`, or train one (`face3d train --config shipped`) and export it with "
                    f"`face3d export-weights --ckpt CKPT --out {_shown(directory)}`"
                )
            raise MissingFileError(
                f"{path} not found: a weights folder holds {WEIGHTS_NAME} and {CARD_NAME}, as "
                "written by `face3d export-weights --ckpt CKPT --out DIR`"
            )
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInputError(
            f"model card {card_path} is not valid JSON ({err}); {_restore_hint(card_path)}"
        ) from None
    expected = card.get("sha256") if isinstance(card, dict) else None
    if not expected:
        raise InvalidInputError(f"model card {card_path} has no 'sha256' entry; {_restore_hint(card_path)}")
    actual = sha256_file(weights_path)
    if actual != expected:
        raise InvalidInputError(
            f"{weights_path} fails its SHA-256 check (expected {expected[:16]}..., found {actual[:16]}..., "
            f"from {card_path.name}): the file is corrupt or was modified; {_restore_hint(weights_path)}"
        )
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise InvalidInputError(
            f"{weights_path} could not be read as R-Net weights ({err.__class__.__name__}: {err}); "
            f"{_restore_hint(weights_path)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InvalidInputError(
            f"{weights_path} is not an R-Net weights file of format {FORMAT!r} (found {found!r}); "
            f"{_restore_hint(weights_path)}"
        )
    return RNetWeights(state_dict=payload["state_dict"], config_yaml=payload["config"], card=card, path=weights_path)


def write_weights(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    config_yaml: str,
    card: dict,
    dtype: torch.dtype = torch.float16,
    step: int | None = None,
    epoch: int | None = None,
) -> Path:
    """Write a weights folder: floating-point tensors stored as ``dtype``, the card completed with the file's
    name, size and SHA-256 (JSON and Markdown). ``step`` and ``epoch`` are stored under the names a Lightning
    checkpoint uses (``global_step``, ``epoch``). Returns the weights file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stored = {
        name: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu()).contiguous()
        for name, t in state_dict.items()
    }
    overflow = [
        name
        for name, t in stored.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()) and bool(torch.isfinite(state_dict[name]).all())
    ]
    if overflow:
        raise ValueError(f"{overflow[:3]} do not fit in {dtype} (values beyond its range); store float32 instead")
    weights_path = directory / WEIGHTS_NAME
    torch.save(
        {"format": FORMAT, "config": config_yaml, "state_dict": stored, "global_step": step, "epoch": epoch},
        weights_path,
    )
    card = {
        "format": FORMAT,
        "file": WEIGHTS_NAME,
        "sha256": sha256_file(weights_path),
        "bytes": weights_path.stat().st_size,
        "dtype": str(dtype).removeprefix("torch."),
        **card,
    }
    (directory / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    (directory / CARD_MARKDOWN_NAME).write_text(card_markdown(card))
    return weights_path


def _markdown_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def card_markdown(card: dict) -> str:
    """The model card as Markdown: a table per section, the licences as a list."""
    lines = [
        f"# {card.get('title', 'R-Net weights')}",
        "",
        card.get("summary", ""),
        "",
        f"File `{card['file']}` ({card['bytes']:,} bytes, {card['dtype']}), SHA-256 `{card['sha256']}` "
        f"(checked on every load; `git checkout -- PATH` restores a damaged copy).",
        "",
    ]
    for section in ("model", "training", "metrics"):
        if section in card:
            lines += [f"## {section.capitalize()}", "", "| | |", "|---|---|"]
            lines += [f"| {key} | {_markdown_value(value)} |" for key, value in card[section].items()]
            lines.append("")
    if "licences" in card:
        lines += ["## Licences", ""]
        lines += [f"- **{item['part']}**: {item['licence']} ({item['source']})" for item in card["licences"]]
        lines.append("")
    if "limitations" in card:
        lines += ["## Limitations", "", card["limitations"], ""]
    return "\n".join(lines)
