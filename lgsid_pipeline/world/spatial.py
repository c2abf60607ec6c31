"""Spatial candidate lookup: ``_GridIndex`` draws items from grid cells around query points,
per group (a city, or a city and a category), with a KD-tree fallback."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

_GROUP_GAP_KM = 10_000.0  # z-offset between (city, category) groups in the 3-D KD-trees
_FALLBACK_NEAREST = 8  # items considered around a destination that falls in an empty cell


class _GridIndex:
    """Candidate items around points, by group (a city, or a city and a category).

    Items are binned into square cells of ``cell_km`` per group, and again into cells four
    times as wide. ``candidates`` returns, per query point, ``k`` uniform draws (with
    replacement) from the items of the point's fine cell; if it is empty, from its coarse
    cell; if that is empty too, from the group's ``_FALLBACK_NEAREST`` items nearest to the
    point (a KD-tree over (x, y, group offset), so the neighbours are in the group).
    """

    def __init__(self, group: np.ndarray, xy: np.ndarray, cell_km: float) -> None:
        self.group = group.astype(np.int64)
        self.levels = []
        for size in (float(cell_km), 4.0 * float(cell_km)):
            key = self._key(self.group, xy, size)
            rows = np.argsort(key, kind="stable")
            keys, start, count = np.unique(key[rows], return_index=True, return_counts=True)
            self.levels.append((size, rows, keys, start, count))
        self.tree = cKDTree(np.column_stack([xy, self.group * _GROUP_GAP_KM]))

    @staticmethod
    def _key(group: np.ndarray, xy: np.ndarray, size: float) -> np.ndarray:
        ij = np.floor(xy / size).astype(np.int64) + 2**20
        return (group * 2**21 + ij[:, 0]) * 2**21 + ij[:, 1]

    def candidates(self, group: np.ndarray, xy: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        group = group.astype(np.int64)
        out = np.zeros((len(group), k), dtype=np.int64)
        todo = np.arange(len(group))
        u = rng.random((len(group), k))
        for size, rows, keys, start, count in self.levels:
            key = self._key(group[todo], xy[todo], size)
            pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            found = keys[pos] == key
            hit, pos = todo[found], pos[found]
            out[hit] = rows[start[pos][:, None] + (u[hit] * count[pos][:, None]).astype(np.int64)]
            todo = todo[~found]
        if len(todo):
            near = self.nearest(group[todo], xy[todo])
            out[todo] = near[np.arange(len(todo))[:, None], (u[todo] * near.shape[1]).astype(np.int64)]
        return out

    def nearest(self, group: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """(n, ``_FALLBACK_NEAREST``) items of each group nearest to each point, nearest first
        (repeating the nearest when the group has fewer items)."""
        n = len(self.group)
        nn = min(_FALLBACK_NEAREST, n)
        _, near = self.tree.query(np.column_stack([xy, group * _GROUP_GAP_KM]), k=nn)
        near = np.minimum(np.asarray(near, dtype=np.int64).reshape(len(group), nn), n - 1)
        return np.where(self.group[near] != group[:, None], near[:, :1], near)
