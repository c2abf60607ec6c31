"""The semantic-ID tokenizer interface shared by HGIT and the baselines (scikit-learn style).

Hyper-parameters are set in ``__init__`` and nothing else happens there; ``fit`` learns state
whose attribute names end in ``_``; ``transform`` returns raw codes ``(N, L)`` int32, before
any uniqueness step (see ``dedup.py``). ``reconstruct(codes)`` maps codes back to the input
embedding space so reconstruction error compares across methods.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.tokenizers.codebook_io import load_state, save_state
from lgsid_pipeline.tokenizers.kmeans import residual_step, sq_distances

_REGISTRY: dict[str, type["SemanticIdTokenizer"]] = {}

TRANSFORM_BLOCK = 16_384
MIN_CODEBOOK_SIZE = 8
MAX_CODEBOOK_SIZE = 256  # TIGER's and GRID's per-level size
ITEMS_PER_CODE = 8  # small catalogues: about this many items per level-1 code


def default_codebook_sizes(n_items: int, levels: int = 3) -> list[int]:
    """Per-level codebook sizes: TIGER / GRID's 256, capped for small catalogues.

    Rule: ``K = clip(ceil(n_items / 8), 8, 256)`` for every level. From about 2,000 items on
    every level has 256 codes, as in TIGER and GRID; a smaller catalogue keeps about 8 items
    per first-level code, so the first level still groups items. The previous rule,
    ``ceil(2 * n ** (1/L))``, gave 35-49 codes for the 5-14k items of the real datasets and
    left 74-99% of the items sharing their raw 3-level code before the dedup digit (the
    digit then carried most of an item's identity); Amazon Beauty (12,101 items) collided
    35-56% at 46 codes and 7-8% at 256. ``collision_figures`` reports the rate per method.
    Pass ``codebook_sizes`` for other sizes.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    k = math.ceil(n_items / ITEMS_PER_CODE)
    return [int(min(MAX_CODEBOOK_SIZE, max(MIN_CODEBOOK_SIZE, k)))] * levels


def check_embeddings(X: Any, d: int | None = None, name: str = "X") -> np.ndarray:
    """Validate an embedding matrix; returns it as contiguous float32 ``(N, d)``."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_items, dim), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has dimension {X.shape[1]} but the tokenizer was fitted on dimension {d}")
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise ValueError(f"{name} row {int(np.flatnonzero(bad)[0])} contains NaN or inf ({int(bad.sum())} rows in all)")
    return X


def check_codes(codes: Any, sizes: list[int], name: str = "codes") -> np.ndarray:
    """Validate codes against per-level codebook sizes; returns int64 ``(N, L)``."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(sizes):
        raise ValueError(f"{name} must have shape (n_items, {len(sizes)}), got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {codes.dtype}")
    codes = codes.astype(np.int64)
    for level, k in enumerate(sizes):
        col = codes[:, level]
        bad = (col < 0) | (col >= k)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} row {row} level {level + 1} = {col[row]} is outside [0, {k})")
    return codes


def check_items(items: pl.DataFrame | None, n: int, required: bool, who: str) -> pl.DataFrame | None:
    if items is None:
        if required:
            raise ValueError(f"{who} needs the items frame (geography, admin, category and brand columns)")
        return None
    if not isinstance(items, pl.DataFrame):
        raise ValueError(f"items must be a polars DataFrame, got {type(items).__name__}")
    if items.height != n:
        raise ValueError(f"items has {items.height} rows but X has {n}; they must be aligned row by row")
    return items


class SemanticIdTokenizer:
    """Base class: residual quantisation over ``L`` levels with per-level codebooks."""

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _REGISTRY[cls.method] = cls

    # --- parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        params = {n: getattr(self, n) for n in names}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _resolve_sizes(self, n: int) -> list[int]:
        """Requested sizes (or the default rule), each shrunk to at most ``n`` (small catalogues)."""
        sizes = list(self.codebook_sizes) if self.codebook_sizes is not None else default_codebook_sizes(n, self.levels)
        if len(sizes) != self.levels:
            raise ValueError(f"codebook_sizes has {len(sizes)} entries but levels={self.levels}")
        if any(int(k) < 1 for k in sizes):
            raise ValueError(f"codebook_sizes must be >= 1, got {sizes}")
        return [int(min(int(k), n)) for k in sizes]

    # --- fitted state -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "codebook_sizes_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(X, items) first")

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "SemanticIdTokenizer":
        raise NotImplementedError

    def transform(self, X: np.ndarray, items: pl.DataFrame | None = None) -> np.ndarray:
        """Raw codes ``(N, L)`` int32 (Eq. 10-12 greedy residual assignment)."""
        self._check_fitted()
        X = check_embeddings(X, self.dim_)
        items = check_items(items, X.shape[0], self._needs_items, type(self).__name__)
        fixed = self._fixed_level_codes(X, items)
        codes = np.empty((X.shape[0], self.levels), dtype=np.int64)
        with torch.no_grad():
            for s in range(0, X.shape[0], TRANSFORM_BLOCK):
                R = self._quant_input(X[s : s + TRANSFORM_BLOCK])
                for level in range(self.levels):
                    C = self._quant_centres(level)
                    given = (np.asarray(fixed[level][s : s + TRANSFORM_BLOCK], dtype=np.int64)
                             if level in fixed else None)
                    z, R = residual_step(R, C, given)  # Eq. 10-12
                    codes[s : s + TRANSFORM_BLOCK, level] = z.numpy()
        return codes.astype(np.int32)

    def _first_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> np.ndarray | None:
        """Override when level 1 is not assigned in the residual space (HGIT: feature F)."""
        return None

    def _fixed_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> dict[int, np.ndarray]:
        """Levels (0-based) whose codes do not come from the residual argmin, with their codes
        (HGIT: level 1 from the Eq. 9 feature; geographic-last variants: the last level)."""
        first = self._first_level_codes(X, items)
        return {} if first is None else {0: first}

    def fit_transform(self, X: np.ndarray, items: pl.DataFrame | None = None) -> np.ndarray:
        return self.fit(X, items).transform(X, items)

    _needs_items: ClassVar[bool] = False

    # residual quantisation space (the input space for HGIT/Res-KMeans, the latent for RQ-VAE)
    def _quant_input(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(X)

    def _quant_centres(self, level: int) -> torch.Tensor:
        return torch.from_numpy(self.centres_[level])

    def _residual_before(self, X: np.ndarray, codes: np.ndarray, level: int) -> torch.Tensor:
        """Eq. 12: R(level-1) = X - sum of the centres chosen at the earlier levels."""
        R = self._quant_input(X)
        for j in range(level):
            _, R = residual_step(R, self._quant_centres(j), np.asarray(codes[:, j], dtype=np.int64))
        return R

    @torch.no_grad()
    def level_distances(self, X: np.ndarray, items: pl.DataFrame | None, codes: np.ndarray, level: int) -> np.ndarray:
        """Squared distances ``(N, K_level)`` of each item to every centre of ``level`` (0-based),
        given its codes at the earlier levels. The argmin is the code ``transform`` picks; the
        other columns rank the alternatives (used by ``dedup.greedy_reassign``)."""
        self._check_fitted()
        R = self._residual_before(X, codes, level)
        C = self._quant_centres(level)
        out = np.empty((R.shape[0], C.shape[0]), dtype=np.float32)
        for s in range(0, R.shape[0], 8192):
            out[s : s + 8192] = sq_distances(R[s : s + 8192], C).numpy()
        return out

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Eq. 11/13: sum of the per-level centres, in the input embedding space ``(N, d)``."""
        self._check_fitted()
        codes = check_codes(codes, self.codebook_sizes_)
        out = np.zeros((codes.shape[0], self.dim_), dtype=np.float32)
        for level in range(self.levels):
            out += self.centres_[level][codes[:, level]]
        return out

    # --- persistence --------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Any]:
        return {f"centres_{i}": c for i, c in enumerate(self.centres_)}

    def _fitted_config(self) -> dict[str, Any]:
        return {}

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any], where: Path) -> None:
        raise NotImplementedError

    def state_dict(self) -> tuple[dict[str, np.ndarray | torch.Tensor], dict[str, Any]]:
        """Arrays to store (safetensors) and a JSON-able config (method, params, fitted scalars)."""
        self._check_fitted()
        config = {
            "method": self.method,
            "params": self.get_params(),
            "fitted": {"codebook_sizes_": list(self.codebook_sizes_), "dim_": int(self.dim_), **self._fitted_config()},
        }
        return self._state_tensors(), config

    def save(self, directory: str | Path) -> Path:
        tensors, config = self.state_dict()
        return save_state(directory, tensors, config)

    @classmethod
    def load(cls, directory: str | Path) -> "SemanticIdTokenizer":
        """Load any tokenizer saved with ``save``; the class is read from the stored config."""
        tensors, config = load_state(directory)
        method = config.get("method")
        if method not in _REGISTRY:
            raise ValueError(f"{Path(directory) / 'tokenizer.json'} names unknown method {method!r}; refit the tokenizer")
        klass = _REGISTRY[method]
        if cls is not SemanticIdTokenizer and not issubclass(klass, cls):
            raise ValueError(f"{directory} holds a {method!r} tokenizer, not {cls.method!r}")
        try:
            obj = klass(**config["params"])
            fitted = config["fitted"]
            obj.codebook_sizes_ = [int(k) for k in fitted["codebook_sizes_"]]
            obj.dim_ = int(fitted["dim_"])
            obj._set_state(tensors, fitted, Path(directory))
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"tokenizer config {Path(directory) / 'tokenizer.json'} is incomplete ({exc!r}); refit the tokenizer"
            ) from None
        return obj


def registry() -> dict[str, type[SemanticIdTokenizer]]:
    return dict(_REGISTRY)
