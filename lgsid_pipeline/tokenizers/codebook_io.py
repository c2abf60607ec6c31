"""Saving and loading tokenizer state: one safetensors file of arrays plus one JSON config.

Never pickle. A missing, truncated or corrupted file raises a ``ValueError`` that names the
file and says how to recover (refit the tokenizer and save it again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lgsid_pipeline.train_state import atomic_save_tensors, load_tensors

TENSORS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "tokenizer.json"
FORMAT_VERSION = 1

_RECOVERY = "refit the tokenizer (fit(X, items)) and save it again"


def save_state(directory: str | Path, tensors: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``tokenizer.safetensors`` + ``tokenizer.json`` into ``directory`` (created if absent)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    as_torch = {k: torch.as_tensor(np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v).contiguous()
                for k, v in tensors.items()}
    atomic_save_tensors(as_torch, directory / TENSORS_FILE)  # with a sha256 in the header
    payload = {"format_version": FORMAT_VERSION, **config}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return directory


def load_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what ``save_state`` wrote; clear ``ValueError`` on a missing or damaged file."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    ten_path = directory / TENSORS_FILE
    for path in (cfg_path, ten_path):
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} is missing; {_RECOVERY}")
    try:
        config = json.loads(cfg_path.read_text())
        if not isinstance(config, dict):
            raise TypeError("top level is not a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise ValueError(f"tokenizer config {cfg_path} is corrupted or truncated ({exc}); {_RECOVERY}") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"tokenizer config {cfg_path} has format_version={config.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}; {_RECOVERY}"
        )
    try:
        tensors = load_tensors(ten_path, "tokenizer weights")  # checks the header's sha256
    except ValueError as exc:
        raise ValueError(f"tokenizer weights {ten_path} are corrupted or truncated ({exc}); {_RECOVERY}") from None
    return tensors, config


def require_tensors(tensors: dict[str, torch.Tensor], names: list[str], where: Path | str) -> None:
    """Raise a ``ValueError`` naming the file when an expected array is absent."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"tokenizer weights in {where} lack arrays {missing}; {_RECOVERY}")
