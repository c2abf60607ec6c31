"""Geohash-prefix baseline: a geographic grid cell first, then semantic residual levels.

What a practitioner tries first for local-life SIDs: the first token is the item's geohash
cell, the later tokens quantise the rest of the LLM embedding (Res-KMeans on
``X - mean embedding of the cell``, Eq. 10-12). The geohash precision is the finest whose
number of occupied cells fits the first codebook (``codebook_sizes[0]``), so the first level
spends its vocabulary on the grid resolution the data can fill. Cells are coded in geohash
(Morton) order; an item in a cell the catalogue did not occupy at fit time takes the nearest
occupied cell (by great-circle chord between cell centres), and an item without coordinates
the cell nearest the catalogue's centre.

The geohash bits are written here (a few lines of bit interleaving over numpy arrays):
the geohash packages on PyPI encode one point at a time, as base-32 strings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.geo import unit_vectors
from lgsid_pipeline.tokenizers.base import SemanticIdTokenizer, check_embeddings, check_items
from lgsid_pipeline.tokenizers.codebook_io import require_tensors
from lgsid_pipeline.tokenizers.hgit import item_lat_lon
from lgsid_pipeline.tokenizers.kmeans import group_means, nearest_centre, residual_kmeans, residual_step, sq_distances

MAX_BITS = 26  # per axis: about 0.6 m of latitude


def geohash_cells(lat: np.ndarray, lon: np.ndarray, bits: int) -> np.ndarray:
    """Geohash cell ids with ``bits`` bits per axis, as int64 (longitude bit first, then
    latitude, interleaved: the geohash bit order, so cells sort along the Z curve)."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    scale = float(1 << bits)
    x = np.clip(((np.asarray(lon) + 180.0) / 360.0 * scale).astype(np.int64), 0, (1 << bits) - 1)
    y = np.clip(((np.asarray(lat) + 90.0) / 180.0 * scale).astype(np.int64), 0, (1 << bits) - 1)
    out = np.zeros(x.shape, dtype=np.int64)
    for b in range(bits - 1, -1, -1):
        out = (out << 2) | (((x >> b) & 1) << 1) | ((y >> b) & 1)
    return out


def cell_centres(cells: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of the centre of each geohash cell."""
    x = np.zeros(cells.shape, dtype=np.int64)
    y = np.zeros(cells.shape, dtype=np.int64)
    for b in range(bits):
        x |= ((cells >> (2 * b + 1)) & 1) << b
        y |= ((cells >> (2 * b)) & 1) << b
    scale = float(1 << bits)
    return (y + 0.5) / scale * 180.0 - 90.0, (x + 0.5) / scale * 360.0 - 180.0


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """:func:`lgsid_pipeline.geo.unit_vectors` as float32 (the cells' search space)."""
    return unit_vectors(lat, lon).astype(np.float32)


class GeoPrefixTokenizer(SemanticIdTokenizer):
    """Geohash cell, then Res-KMeans levels on the embedding residual (see the module doc)."""

    method = "geo_prefix"
    _needs_items = True

    def __init__(self, codebook_sizes: list[int] | None = None, levels: int = 3, seed: int = 0,
                 kmeans_max_samples: int | None = 131_072) -> None:
        self.codebook_sizes = codebook_sizes
        self.levels = levels
        self.seed = seed
        self.kmeans_max_samples = kmeans_max_samples

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "GeoPrefixTokenizer":
        X = check_embeddings(X)
        items = check_items(items, X.shape[0], True, "geo_prefix")
        t0 = time.perf_counter()
        sizes = self._resolve_sizes(X.shape[0])
        lat, lon, ok = item_lat_lon(items)
        if not ok.any():
            raise ValueError("geo_prefix needs coordinates: every item's lat/lon is null")
        bits, cells = 1, np.unique(geohash_cells(lat[ok], lon[ok], 1))
        for b in range(2, MAX_BITS + 1):
            finer = np.unique(geohash_cells(lat[ok], lon[ok], b))
            if finer.size > sizes[0]:
                break
            bits, cells = b, finer
        self.bits_ = int(bits)
        self.cells_ = cells
        self.cell_units_ = _unit(*cell_centres(cells, bits))
        z1 = self._cell_codes(items)
        centres = [group_means(X, z1, cells.size)]
        _, R = residual_step(X.copy(), centres[0], z1)  # Eq. 11-12 with the cells as level-1 codes
        codes = np.empty((X.shape[0], self.levels), dtype=np.int32)
        codes[:, 0] = z1
        more, R = residual_kmeans(R, sizes, range(1, self.levels), seed=self.seed,  # Eq. 10-12 per level
                                  max_samples=self.kmeans_max_samples, codes=codes)
        centres += more
        self.centres_ = centres
        self.codes_ = codes
        self.codebook_sizes_ = [int(c.shape[0]) for c in centres]
        self.dim_ = int(X.shape[1])
        self.history_ = [{"epoch": 0, "seconds": time.perf_counter() - t0,
                          "recon_mse": float((R.astype(np.float64) ** 2).sum(1).mean())}]
        return self

    def _cell_codes(self, items: pl.DataFrame) -> np.ndarray:
        lat, lon, ok = item_lat_lon(items)
        cell = geohash_cells(lat, lon, self.bits_)
        pos = np.searchsorted(self.cells_, cell).clip(max=self.cells_.size - 1)
        z = pos.astype(np.int64)
        miss = ~(self.cells_[pos] == cell) | ~ok
        if miss.any():
            u = _unit(*cell_centres(cell[miss], self.bits_))
            u[~ok[miss]] = self.cell_units_.mean(0)
            z[miss], _ = nearest_centre(u, self.cell_units_)
        return z

    def _first_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> np.ndarray:
        return self._cell_codes(items)

    @torch.no_grad()
    def level_distances(self, X: np.ndarray, items: pl.DataFrame | None, codes: np.ndarray, level: int) -> np.ndarray:
        if level > 0:
            return super().level_distances(X, items, codes, level)
        self._check_fitted()
        items = check_items(items, np.asarray(X).shape[0], True, "geo_prefix")
        lat, lon, ok = item_lat_lon(items)
        u = _unit(lat, lon)
        u[~ok] = self.cell_units_.mean(0)
        # the item's own cell first (a point can lie nearer another cell's centre than its
        # own), then the other cells by distance between centres
        d = sq_distances(torch.from_numpy(u), torch.from_numpy(self.cell_units_)).numpy() + 1e-6
        d[np.arange(d.shape[0]), self._cell_codes(items)] = 0.0
        return d

    def _state_tensors(self) -> dict[str, Any]:
        return {**super()._state_tensors(), "cells": self.cells_}

    def _fitted_config(self) -> dict[str, Any]:
        return {"bits_": self.bits_}

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any], where: Path) -> None:
        names = [f"centres_{i}" for i in range(self.levels)] + ["cells"]
        require_tensors(tensors, names, where)
        self.centres_ = [tensors[f"centres_{i}"].numpy().astype(np.float32) for i in range(self.levels)]
        self.cells_ = tensors["cells"].numpy().astype(np.int64)
        self.bits_ = int(fitted["bits_"])
        self.cell_units_ = _unit(*cell_centres(self.cells_, self.bits_))
        self.history_ = []
