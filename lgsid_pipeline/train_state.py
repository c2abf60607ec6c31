"""Resumable training state on disk: safetensors for tensors, JSON for everything else.

Used by the reward model (Eq. 2-4) and G-DPO (Eq. 6-8) trainers and the codebook writer.
Every file is written to a temporary name unique to the writer (pid + random suffix, so two
writers never share one), flushed and fsynced, then renamed into place with ``os.replace``
and the directory fsynced: a run killed mid-write leaves the previous file intact, and a
crash right after the rename cannot leave an empty file behind it. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, rename it onto ``path`` and fsync the directory (removing ``tmp`` on error)."""
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def artefact_lock(path: Path, timeout: float = 900.0):
    """An exclusive lock for one artefact (``<path>.lock``, via ``filelock``): two processes that
    write the same artefact take turns; a holder that died releases it with its process."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock", timeout=timeout)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise RuntimeError(f"another process has held the lock on {path} for {timeout:.0f}s; "
                           "is a second run writing the same artefact?") from exc


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
    replace_durably(tmp, path)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


DIGEST_KEY = "lgsid_sha256"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write safetensors atomically, with a sha256 of the tensor data in the header metadata
    (safetensors itself has no checksum, so a flipped bit would otherwise load silently)."""
    path = Path(path)
    tmp = tmp_name(path)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(clean, str(tmp), metadata={DIGEST_KEY: tensors_digest(clean)})
    replace_durably(tmp, path)


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning corruption into a clear ``ValueError``."""
    if not path.is_file():
        raise ValueError(f"{what}: file {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({exc}); "
                         "delete it and re-materialize the asset that wrote it") from exc
    want = meta.get(DIGEST_KEY)
    if want is not None and tensors_digest(tensors) != want:
        raise ValueError(f"{what}: {path} fails its sha256 check (the file is corrupted); "
                         "delete it and re-materialize the asset that wrote it")
    return tensors


def load_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{what}: file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from exc


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into flat tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckpt_dir: Path, model_tensors: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer, meta: dict) -> None:
    """Write model tensors, optimizer state and ``meta`` (step, history, ...) to ``ckpt_dir``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt_t, opt_meta = optimizer_tensors(opt)
    with artefact_lock(ckpt_dir / "checkpoint"):  # two trainers of one checkpoint take turns
        atomic_save_tensors(model_tensors, ckpt_dir / "model.safetensors")
        atomic_save_tensors(opt_t, ckpt_dir / "optimizer.safetensors")
        # state.json is written last: it is the marker that the checkpoint is complete, and it
        # names the exact tensors it belongs to, so a run killed between the three writes (new
        # weights, old state.json) is detected on load instead of resuming from a torn mixture.
        atomic_write_text(ckpt_dir / "state.json", json.dumps({
            **meta, "optimizer": opt_meta, "model_sha256": tensors_digest(model_tensors),
            "optimizer_sha256": tensors_digest(opt_t)}))


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict] | None:
    """(model tensors, optimizer tensors, meta), or None when ``ckpt_dir`` holds no checkpoint."""
    if ckpt_dir is None or not (ckpt_dir / "state.json").is_file():
        return None
    meta = load_json(ckpt_dir / "state.json", "checkpoint")
    model_t = load_tensors(ckpt_dir / "model.safetensors", "checkpoint model")
    opt_t = load_tensors(ckpt_dir / "optimizer.safetensors", "checkpoint optimizer")
    if (meta.get("model_sha256") not in (None, tensors_digest(model_t))
            or meta.get("optimizer_sha256") not in (None, tensors_digest(opt_t))):
        # Killed after writing new tensors but before state.json: the files are from a later
        # step than state.json says. Resuming would mix steps, so start the training over.
        log.warning("checkpoint in %s is torn (the run was killed while saving); training starts over",
                    ckpt_dir)
        return None
    return model_t, opt_t, meta
