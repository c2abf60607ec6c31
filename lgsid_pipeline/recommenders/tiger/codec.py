"""SID tokens: the item <-> SID codec with its prefix trie, and the token tables TIGER reads.

Level ``l`` code ``c`` is token ``N_SPECIAL + offsets[l] + c``; tokens ``PAD`` and ``BOS`` come
first and the optional hashed user tokens last. :class:`Tokens` turns item-index histories
into encoder inputs and target items into decoder targets; :func:`training_prefixes` lists
every next-item prefix of the training sequences (shared with DIN and DIEN).
"""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl
import torch

from ..data import SplitData
from ..reachability import recent_items as history_matrix  # (users, h) last items, -1 left-padded
from .config import TigerConfig

__all__ = ["BOS", "DENSE_TABLE_LIMIT", "N_SPECIAL", "PAD", "SIDCodec", "Tokens", "history_matrix", "sid_codes_for",
           "training_prefixes"]

PAD, BOS, N_SPECIAL = 0, 1, 2
DENSE_TABLE_LIMIT = 1 << 24  # entries (int64: 128 MiB) of one level's valid-next-token table

class SIDCodec:
    """Item <-> SID tokens, and the prefix trie used by constrained beam search.

    ``codes`` is (items, L) with non-negative ints; level ``l`` code ``c`` is token
    ``N_SPECIAL + offsets[l] + c``. The trie for level ``l`` is the sorted array of keys
    ``parent_prefix * sizes[l] + code`` with the child prefix id of each key (item index at the
    last level).

    ``item_prefix[l]`` is each item's prefix-node id after its level-``l`` code (the value
    ``trie_child[l]`` yields for that item's key; at the last level the item index itself), and
    ``n_nodes[l]`` the number of such nodes. They let a caller restrict beam search per user
    (``beam_search(..., allowed=...)``) by scattering allowed items onto prefix nodes.
    """

    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError("SID codes must be a non-empty (items, levels) matrix")
        if (codes < 0).any():
            raise ValueError("SID codes must be non-negative")
        uniq = np.unique(codes, axis=0)
        if uniq.shape[0] != codes.shape[0]:
            raise ValueError(
                f"{codes.shape[0] - uniq.shape[0]} SID collisions: SIDs must be unique per method "
                "(apply the tokenizer's dedup step, e.g. an appended digit)"
            )
        self.codes = codes
        self.levels = codes.shape[1]
        self.sizes = codes.max(axis=0) + 1
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.n_codes = int(self.sizes.sum())
        self.tokens = codes + self.offsets[None, :] + N_SPECIAL
        # trie: prefix ids per level
        self.trie_keys: list[np.ndarray] = []
        self.trie_child: list[np.ndarray] = []
        self.item_prefix: list[np.ndarray] = []
        self.n_nodes: list[int] = []
        parent = np.zeros(codes.shape[0], dtype=np.int64)
        for lvl in range(self.levels):
            key = parent * self.sizes[lvl] + codes[:, lvl]
            if lvl == self.levels - 1:
                order = np.argsort(key)
                self.trie_keys.append(key[order])
                self.trie_child.append(order)  # item index
                self.item_prefix.append(np.arange(codes.shape[0], dtype=np.int64))
                self.n_nodes.append(int(codes.shape[0]))
            else:
                uk, child = np.unique(key, return_inverse=True)
                self.trie_keys.append(uk)
                self.trie_child.append(np.arange(uk.size))
                parent = child.reshape(-1)
                self.item_prefix.append(parent.astype(np.int64))
                self.n_nodes.append(int(uk.size))

        # valid-next-token tables: level l's (parent nodes, codes) child ids, -1 where the trie
        # has no such child; one gather per level instead of a binary search. Levels whose
        # table would exceed DENSE_TABLE_LIMIT entries keep the sorted-key search.
        self.next_table: list[torch.Tensor | None] = []
        n_parents = 1
        for lvl in range(self.levels):
            size = int(self.sizes[lvl])
            if n_parents * size <= DENSE_TABLE_LIMIT:
                table = np.full(n_parents * size, -1, dtype=np.int64)
                table[self.trie_keys[lvl]] = self.trie_child[lvl]
                self.next_table.append(torch.from_numpy(table.reshape(n_parents, size)))
            else:
                self.next_table.append(None)
            n_parents = self.n_nodes[lvl]

    def lookup(self, lvl: int, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For parent prefix ids (any shape), return (valid, child) over every level-``lvl`` code."""
        table = self.next_table[lvl]
        if table is not None:
            c = table[parent]
            valid = c >= 0
            return valid, torch.where(valid, c, torch.zeros_like(c))
        size = int(self.sizes[lvl])
        keys = torch.from_numpy(self.trie_keys[lvl])
        child = torch.from_numpy(self.trie_child[lvl])
        q = parent.unsqueeze(-1) * size + torch.arange(size)
        pos = torch.searchsorted(keys, q.reshape(-1)).clamp(max=keys.numel() - 1).reshape(q.shape)
        valid = keys[pos] == q
        return valid, torch.where(valid, child[pos], torch.zeros_like(pos))


def sid_codes_for(split: SplitData, sids) -> np.ndarray:
    """(items, L) code matrix aligned to the split vocabulary from a dict or a SID frame."""
    if isinstance(sids, pl.DataFrame):
        for col in ("item_id", "sid"):
            if col not in sids.columns:
                raise ValueError(f"SID frame lacks column {col!r}")
        if "method" in sids.columns and sids["method"].n_unique() > 1:
            raise ValueError("SID frame holds several methods; filter it to one method first")
        mapping = dict(zip(sids["item_id"].cast(pl.Utf8).to_list(), sids["sid"].to_list()))
    else:
        mapping = {str(k): v for k, v in dict(sids).items()}
    rows = []
    for it in split.item_ids:
        code = mapping.get(it)
        if code is None:
            raise ValueError(f"item_id {it!r} of the split has no SID")
        rows.append(tuple(int(c) for c in code))
    lens = {len(r) for r in rows}
    if len(lens) != 1:
        raise ValueError(f"SIDs of one method must share one length; found lengths {sorted(lens)}")
    return np.asarray(rows, dtype=np.int64)


def _user_token(user_ids: list[str], buckets: int, base: int) -> np.ndarray:
    return np.array([base + zlib.crc32(u.encode()) % buckets for u in user_ids], dtype=np.int64)


def training_prefixes(split: SplitData, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every next-item prefix of the training sequences: (user, history (n, h), target)."""
    users, hists, targets = [], [], []
    for u, s in enumerate(split.train_seqs):
        n = s.size
        if n < 2:
            continue
        padded = np.concatenate([np.full(h, -1, dtype=np.int64), s])
        win = np.lib.stride_tricks.sliding_window_view(padded, h)[1:n]  # rows t = 1..n-1
        hists.append(win)
        targets.append(s[1:])
        users.append(np.full(n - 1, u, dtype=np.int64))
    if not hists:
        raise ValueError("no training sequence has two items; TIGER needs next-item prefixes")
    return np.concatenate(users), np.concatenate(hists), np.concatenate(targets)


class Tokens:
    """Turns item-index histories into encoder token matrices."""

    def __init__(self, codec: SIDCodec, cfg: TigerConfig, split: SplitData):
        self.codec = codec
        self.cfg = cfg
        self.tok = np.vstack([np.zeros((1, codec.levels), dtype=np.int64), codec.tokens])  # row 0 = pad
        self.user_tok = (
            _user_token(split.user_ids, cfg.user_buckets, N_SPECIAL + codec.n_codes) if cfg.user_buckets else None
        )

    def encoder_input(self, hist: np.ndarray, users: np.ndarray) -> torch.Tensor:
        t = self.tok[hist + 1]  # (B, H, L)
        if self.cfg.history_tokens == "item":
            if self.user_tok is not None:
                u = np.zeros((hist.shape[0], 1, self.codec.levels), dtype=np.int64)
                u[:, 0, 0] = self.user_tok[users]
                t = np.concatenate([u, t], axis=1)
            return torch.from_numpy(np.ascontiguousarray(t))
        t = t.reshape(hist.shape[0], -1)
        if self.user_tok is not None:
            t = np.concatenate([self.user_tok[users][:, None], t], axis=1)
        return torch.from_numpy(t)

    def decoder_target(self, items: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.codec.tokens[items] - N_SPECIAL)  # code-space ids (B, L)
