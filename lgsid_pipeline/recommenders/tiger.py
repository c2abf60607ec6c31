"""TIGER-style generative recommender over semantic IDs (Rajput et al. 2023).

An encoder-decoder transformer reads the user's history of SID tokens (one token range per
level, plus an optional hashed user token) and generates the next item's SID level by level.
``history_tokens="flat"`` (TIGER) feeds ``L`` encoder positions per item; ``"item"`` sums an
item's ``L`` SID-token embeddings into one encoder position, which cuts encoder cost by ``L``
on CPU while the model still sees only SID tokens (no item-ID embedding). Training uses every next-item prefix of the training
sequences (position ``t``'s target is item ``t``); the validation target drives early
stopping on NDCG@10.

Decoding is constrained beam search through a prefix trie of the catalogue's SIDs, batched
over users (only the per-level loop is in Python). Every generated SID is a real item, and
every item is reachable. The beams of one user are laid side by side in one decoder sequence
with a block-diagonal causal mask, so the encoder memory (and its cross-attention keys and
values) is computed once per user, not once per beam. Masking: the README protocol masks the user's last history item, so
the search keeps ``beams >= K + 1`` beams, drops the masked item from the finished beams and
keeps the best ``K`` of the rest.

Each level's distribution is a softmax over that level's codes only (training and decoding
alike); the trie then removes the codes that lead to no item, without renormalising, as in
TIGER's constrained decoding.
"""

from __future__ import annotations

import copy
import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from ..progress import advance
from .data import SplitData
from .heuristics import stage_metrics
from .metrics import topk_metrics
from .reachability import recent_items as _history_matrix  # (users, h) last items, -1 left-padded

PAD, BOS, N_SPECIAL = 0, 1, 2
DENSE_TABLE_LIMIT = 1 << 24  # entries (int64: 128 MiB) of one level's valid-next-token table


@dataclass
class TigerConfig:
    d_model: int = 128
    ff_dim: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 256
    max_history: int = 20
    history_tokens: str = "item"  # "flat": L encoder positions per item; "item": one (summed) per item
    beams: int = 20
    k: int = 10
    patience: int = 3
    user_buckets: int = 0  # TIGER hashes users into 2,000 tokens; 0 leaves the user token out
    eval_batch: int = 256
    max_valid_users: int | None = None  # early-stopping subset (None = every user)
    max_seconds: float | None = None  # training time cap (checked between batches); depends on machine load
    max_steps: int | None = None  # optimiser-step budget across epochs: a cap that reproduces on any machine
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    fast: bool = True  # lean forward + level-sliced head + KV-cached beam search; False = nn.Transformer reference
    length_buckets: int = 16  # sort each run of this many batches by history length (less padding); 0 = plain shuffle
    # bfloat16 autocast of the matrix products in training and beam search (weights, optimiser,
    # losses and beam scores stay float32). Off by default: it changes the numbers, and the
    # real-data tables were measured in float32 (benchmarks/results/speed.md).
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.beams < self.k + 1:
            raise ValueError(f"beams ({self.beams}) must be >= k + 1 ({self.k + 1}) to survive masking")
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.length_buckets < 0:
            raise ValueError(f"length_buckets must be >= 0, got {self.length_buckets}")
        if self.history_tokens not in ("flat", "item"):
            raise ValueError(f"history_tokens must be 'flat' or 'item', got {self.history_tokens!r}")


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


class TigerModel(nn.Module):
    """The encoder-decoder. Parameters live in standard ``nn.Transformer*`` modules (so saved
    weights load either way); ``cfg.fast`` picks how they are run:

    - ``fast=True`` (default): a lean functional forward over the same parameters, with
      ``scaled_dot_product_attention``, a head evaluated only on each level's own code slice
      (the masked full-vocabulary softmax it replaces gives exactly the same loss and
      log-probs), and a key/value-cached decoder for beam search;
    - ``fast=False``: the modules' own forward (the reference path the speed benchmark and
      the equivalence tests compare against).

    Encoder positions are right-aligned (the most recent item always has the last position
    id), so a batch whose histories are all shorter than ``max_history`` can drop its leading
    padding columns without changing any output.
    """

    def __init__(self, cfg: TigerConfig, n_codes: int, levels: int):
        super().__init__()
        self.cfg = cfg
        self.levels = levels
        self.n_codes = n_codes
        vocab = N_SPECIAL + n_codes + cfg.user_buckets
        self.embed = nn.Embedding(vocab, cfg.d_model, padding_idx=PAD)
        n_pos = cfg.max_history * (levels if cfg.history_tokens == "flat" else 1) + 1
        self.enc_pos = nn.Embedding(n_pos, cfg.d_model)
        # an untrimmed input's length (the window, plus the user token when there is one): its
        # positions are 0 .. full_len - 1, and a trimmed input keeps the last ones
        self.full_len = n_pos - 1 + (1 if cfg.user_buckets else 0)
        self.dec_pos = nn.Embedding(levels + 1, cfg.d_model)
        enc_layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        dec_layer = nn.TransformerDecoderLayer(
            cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            enc_layer, cfg.enc_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.dec_layers, norm=nn.LayerNorm(cfg.d_model))
        self.head = nn.Linear(cfg.d_model, n_codes)

    # ------------------------------------------------------------------ shared pieces
    def _p(self) -> float:
        return self.cfg.dropout if self.training else 0.0

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, heads, T, D / heads)."""
        b, n, d = t.shape
        return t.reshape(b, n, self.cfg.heads, d // self.cfg.heads).transpose(1, 2)

    def _attend(self, m: nn.MultiheadAttention, q, k, v, mask) -> torch.Tensor:
        """Attention of already projected (B, T, D) q/k/v through ``m``'s output projection."""
        b, n, d = q.shape
        o = nn.functional.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=mask, dropout_p=self._p()
        )
        return m.out_proj(o.transpose(1, 2).reshape(b, n, d))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted dropout whose keep mask comes from 16-bit draws of the seeded global
        generator (keep probability ``1 - p`` to 1/65536). On CPU, ``torch.bernoulli`` draws
        a float per element and was a fifth of a training step; the int16 draw is under half
        of that. Same expectation and variance as ``F.dropout``."""
        p = self._p()
        if p == 0.0:
            return x
        keep = torch.randint(-32768, 32768, x.shape, dtype=torch.int16, device=x.device) >= round(p * 65536) - 32768
        return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)

    def _ff(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self._drop(layer.linear2(self._drop(nn.functional.relu(layer.linear1(h)))))

    def _embed_src(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if src.dim() == 3:
            pad = (src == PAD).all(-1)
            h = self.embed(src).sum(2)
        else:
            pad = src == PAD
            h = self.embed(src)
        n = h.shape[1]
        if n > self.full_len:
            raise ValueError(f"encoder input has {n} positions, more than the model's {self.full_len}")
        pos = torch.arange(self.full_len - n, self.full_len, device=src.device)  # right-aligned
        return h + self.enc_pos(pos)[None], pad

    # ------------------------------------------------------------------ encoder
    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` is (B, T) flat tokens or (B, H, L) per-item tokens (summed per item).
        Returns (memory (B, T, D), padding mask (B, T), True at padding)."""
        h, pad = self._embed_src(src)
        if not self.cfg.fast:
            return self.encoder(h, src_key_padding_mask=pad), pad
        mask = (~pad)[:, None, None, :]
        for layer in self.encoder.layers:
            a = layer.norm1(h)
            q, k, v = nn.functional.linear(a, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1)
            h = h + self._drop(self._attend(layer.self_attn, q, k, v, mask))
            h = h + self._ff(layer, layer.norm2(h))
        return self.encoder.norm(h), pad

    # ------------------------------------------------------------------ decoder
    def _cross_kv(self, layer: nn.Module, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = layer.multihead_attn
        d = memory.shape[-1]
        return nn.functional.linear(memory, m.in_proj_weight[d:], m.in_proj_bias[d:]).chunk(2, -1)

    def decode_hidden(self, tgt_in: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor, beams: int = 1):
        """Final decoder states (B, t, D) for ``tgt_in`` (B, beams * n): ``beams`` independent
        sequences of length ``n`` side by side (block-diagonal causal mask)."""
        t = tgt_in.shape[1]
        n = t // beams
        dev = tgt_in.device
        pos = torch.arange(n, device=dev).repeat(beams)
        h = self.embed(tgt_in) + self.dec_pos(pos)[None]
        blk = torch.arange(t, device=dev) // n
        allowed = (blk[:, None] == blk[None, :]) & (pos[None, :] <= pos[:, None])
        if not self.cfg.fast:
            mask = torch.zeros(t, t, device=dev).masked_fill(~allowed, float("-inf"))
            return self.decoder(h, memory, tgt_mask=mask, memory_key_padding_mask=mem_pad)
        mmask = (~mem_pad)[:, None, None, :]
        d = h.shape[-1]
        for layer in self.decoder.layers:
            a = layer.norm1(h)
            sa = layer.self_attn
            q, k, v = nn.functional.linear(a, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            h = h + self._drop(self._attend(sa, q, k, v, allowed))
            ca = layer.multihead_attn
            q = nn.functional.linear(layer.norm2(h), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            k, v = self._cross_kv(layer, memory)
            h = h + self._drop(self._attend(ca, q, k, v, mmask))
            h = h + self._ff(layer, layer.norm3(h))
        return self.decoder.norm(h)

    def decode(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor, beams: int = 1
    ) -> torch.Tensor:
        """Decoder logits over all codes for ``tgt_in`` (B, beams * n) (see :meth:`decode_hidden`)."""
        return self.head(self.decode_hidden(tgt_in, memory, mem_pad, beams))  # (B, t, n_codes)

    def level_logits(self, h: torch.Tensor, offset: int, size: int) -> torch.Tensor:
        """Head logits of one level's codes only: the same numbers as ``head(h)[..., offset:offset + size]``."""
        return nn.functional.linear(h, self.head.weight[offset : offset + size], self.head.bias[offset : offset + size])

    def train_loss(self, src: torch.Tensor, tgt: torch.Tensor, codec: "SIDCodec") -> torch.Tensor:
        """Mean cross-entropy of the target SIDs ``tgt`` (B, L, code-space ids), each level a
        softmax over its own codes (teacher forcing)."""
        b = tgt.shape[0]
        tgt_in = torch.cat([torch.full((b, 1), BOS, device=tgt.device, dtype=tgt.dtype), tgt[:, :-1] + N_SPECIAL], 1)
        memory, mem_pad = self.encode(src)
        h = self.decode_hidden(tgt_in, memory, mem_pad)
        if not self.cfg.fast:
            logits = self.head(h) + _level_mask(codec).to(h.device)[None]
            return nn.functional.cross_entropy(logits.reshape(-1, codec.n_codes), tgt.reshape(-1))
        total = h.new_zeros(())
        for lvl in range(codec.levels):
            off, size = int(codec.offsets[lvl]), int(codec.sizes[lvl])
            total = total + nn.functional.cross_entropy(
                self.level_logits(h[:, lvl], off, size).float(), tgt[:, lvl] - off, reduction="sum"
            )
        return total / tgt.numel()


def _autocast(cfg: TigerConfig):
    """bfloat16 autocast where ``cfg.bf16`` asks for it; a no-op context otherwise."""
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)


def _user_token(user_ids: list[str], buckets: int, base: int) -> np.ndarray:
    return np.array([base + zlib.crc32(u.encode()) % buckets for u in user_ids], dtype=np.int64)


def _training_prefixes(split: SplitData, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


class _Tokens:
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


def _level_mask(codec: SIDCodec) -> torch.Tensor:
    """(L, n_codes) additive mask: 0 inside level l's token range, -inf elsewhere."""
    m = torch.full((codec.levels, codec.n_codes), float("-inf"))
    for lvl in range(codec.levels):
        o = int(codec.offsets[lvl])
        m[lvl, o : o + int(codec.sizes[lvl])] = 0.0
    return m


class _CachedDecoder:
    """Incremental decoding for beam search: one new token per beam and level.

    Each layer keeps its self-attention keys and values per beam (reordered when beams are
    re-ranked), and the cross-attention keys and values of the encoder memory once per user:
    the ``w`` beams of a user are that user's ``w`` query rows against one memory. Same
    numbers as re-running :meth:`TigerModel.decode` on the whole prefix (tested), at one
    token's cost per step instead of the prefix's.
    """

    def __init__(self, model: TigerModel, memory: torch.Tensor, mem_pad: torch.Tensor):
        self.model = model
        self.mask = (~mem_pad)[:, None, None, :]  # (B, 1, 1, S)
        self.cross = [tuple(model._heads(t) for t in model._cross_kv(layer, memory)) for layer in model.decoder.layers]
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.decoder.layers)

    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """``tokens`` (B, w): each beam's newest token at decoder position ``pos``; returns the
        final decoder state of that position (B, w, D)."""
        m = self.model
        b, w = tokens.shape
        h = m.embed(tokens) + m.dec_pos.weight[pos]
        d = h.shape[-1]
        nh, dh = m.cfg.heads, d // m.cfg.heads
        sdpa = nn.functional.scaled_dot_product_attention
        for i, layer in enumerate(m.decoder.layers):
            sa = layer.self_attn
            q, k, v = nn.functional.linear(layer.norm1(h), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            k = k.reshape(b, w, nh, 1, dh)
            v = v.reshape(b, w, nh, 1, dh)
            if self.cache[i] is not None:
                k = torch.cat([self.cache[i][0], k], 3)
                v = torch.cat([self.cache[i][1], v], 3)
            self.cache[i] = (k, v)
            n = k.shape[3]
            o = sdpa(q.reshape(b * w, nh, 1, dh), k.reshape(b * w, nh, n, dh), v.reshape(b * w, nh, n, dh))
            h = h + sa.out_proj(o.reshape(b, w, d))
            ca = layer.multihead_attn
            q = nn.functional.linear(layer.norm2(h), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            ck, cv = self.cross[i]
            o = sdpa(q.reshape(b, w, nh, dh).transpose(1, 2), ck, cv, attn_mask=self.mask)  # (B, nh, w, dh)
            h = h + ca.out_proj(o.transpose(1, 2).reshape(b, w, d))
            h = h + layer.linear2(nn.functional.relu(layer.linear1(layer.norm3(h))))
        return m.decoder.norm(h)

    def reorder(self, src_beam: torch.Tensor) -> None:
        """Keep, per user, the caches of beams ``src_beam`` (B, w_new) in that order."""
        for i, kv in enumerate(self.cache):
            if kv is None:
                continue
            idx = src_beam[:, :, None, None, None].expand(-1, -1, *kv[0].shape[2:])
            self.cache[i] = (torch.gather(kv[0], 1, idx), torch.gather(kv[1], 1, idx))


@torch.no_grad()
def beam_search(
    model: TigerModel,
    codec: SIDCodec,
    src: torch.Tensor,
    beams: int,
    allowed: list[torch.Tensor] | None = None,
    constrained: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained beam search for a batch of encoder inputs.

    ``constrained=False`` searches every code of every level with no trie (the serving
    question: how often would the model emit a SID that is no item?); a beam whose codes leave
    the catalogue keeps its score but comes back as item -1.

    ``allowed`` (optional, one bool tensor (B, codec.n_nodes[l]) per level) narrows the trie per
    row: a level-``l`` code is valid only if the trie has it and ``allowed[l][b, child]`` holds
    for the prefix node it leads to (local-life ranking: only nodes above a candidate item).
    ``None`` leaves the search exactly as without it.

    With ``model.cfg.fast`` the decoder runs incrementally (:class:`_CachedDecoder`) and the
    head only over the level's codes; otherwise every level re-decodes the whole prefix of
    every beam through the reference modules. Both give the same beams (tested).

    Returns (items (B, beams) int64, -1 for dead beams; scores (B, beams) summed log-probs,
    -inf for dead beams), best first.
    """
    model.eval()
    with _autocast(model.cfg):
        return _beam_search(model, codec, src, beams, allowed, constrained)


def _beam_search(model, codec, src, beams, allowed, constrained):
    dev = src.device
    memory, mem_pad = model.encode(src)
    b = src.shape[0]
    w = 1
    prefix = torch.zeros(b, 1, dtype=torch.long)
    score = torch.zeros(b, 1)
    fast = model.cfg.fast
    cached = _CachedDecoder(model, memory, mem_pad) if fast else None
    alive = torch.ones(b, 1, dtype=torch.bool)  # the beam's codes so far are a catalogue prefix
    tokens = torch.full((b, 1, 1), BOS, dtype=torch.long)
    for lvl in range(codec.levels):
        size = int(codec.sizes[lvl])
        off = int(codec.offsets[lvl])
        n = lvl + 1
        if fast:
            h = cached.step(tokens[:, :, -1].to(dev), lvl)
            logits = model.level_logits(h, off, size)
        else:
            logits = model.decode(tokens.reshape(b, w * n).to(dev), memory, mem_pad, beams=w)
            logits = logits.reshape(b, w, n, -1)[:, :, -1, off : off + size]
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        valid, child = codec.lookup(lvl, prefix)
        if allowed is not None:
            ok = torch.gather(allowed[lvl].cpu(), 1, child.reshape(b, -1)).reshape(valid.shape)
            valid = valid & ok
        if constrained:
            cand = torch.where(valid, score.unsqueeze(-1) + logp, torch.full_like(logp, float("-inf")))
        else:
            cand = score.unsqueeze(-1) + logp
        nw = min(beams, w * size)
        top_s, top_i = cand.reshape(b, -1).topk(nw, dim=1)
        src_beam = top_i // size
        code = top_i % size
        alive = torch.gather(alive, 1, src_beam) & torch.gather((valid & alive.unsqueeze(-1)).reshape(b, -1), 1, top_i)
        prefix = torch.gather(child.reshape(b, -1), 1, top_i)
        score = top_s
        prev = torch.gather(tokens, 1, src_beam.unsqueeze(-1).expand(b, nw, tokens.shape[2]))
        tokens = torch.cat([prev, (code + off + N_SPECIAL).unsqueeze(-1)], dim=2)
        if fast and lvl < codec.levels - 1:
            cached.reorder(src_beam.to(dev))
        w = nw
    items = torch.where(torch.isfinite(score) & alive, prefix, torch.full_like(prefix, -1))
    return items, score


def _trim(hist: np.ndarray, cfg: TigerConfig) -> np.ndarray:
    """Drop the leading columns that are padding in every row (left-padded histories).

    Outputs do not change (positions are right-aligned and padding is masked). Not applied with
    a user token, whose position is fixed at the window's start."""
    if cfg.user_buckets or not cfg.fast or hist.shape[0] == 0:
        return hist
    filled = (hist >= 0).any(0)
    return hist[:, int(filled.argmax()) :] if filled.any() else hist[:, -1:]


def _rank_users(
    model: TigerModel,
    tk: _Tokens,
    hist: np.ndarray,
    users: np.ndarray,
    masked: np.ndarray,
    cfg: TigerConfig,
    k: int,
    allowed=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items and scores per user after dropping the masked last item.

    ``allowed`` (optional) is a callable ``rows -> list of per-level bool masks`` for the rows
    ``hist[rows]`` (an index array; see :func:`beam_search`); it is called once per eval batch.
    On the fast path users are batched by history length (each batch drops its all-padding
    columns); results come back in the input order and do not depend on the batching.
    """
    out_i = np.full((hist.shape[0], k), -1, dtype=np.int64)
    out_s = np.full((hist.shape[0], k), -np.inf)
    order = np.arange(hist.shape[0])
    if cfg.fast:
        order = np.argsort(-(hist >= 0).sum(1), kind="stable")
    for s in range(0, hist.shape[0], cfg.eval_batch):
        rows = order[s : s + cfg.eval_batch]
        src = tk.encoder_input(_trim(hist[rows], cfg), users[rows]).to(cfg.device)
        masks = allowed(rows) if allowed is not None else None
        items, scores = beam_search(model, tk.codec, src, cfg.beams, allowed=masks)
        items, scores = items.numpy(), scores.numpy()
        keep = (items != masked[rows, None]) & (items >= 0)
        top = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        ii = np.take_along_axis(items, top, 1)
        ss = np.take_along_axis(scores, top, 1)
        kk = np.take_along_axis(keep, top, 1)
        out_i[rows] = np.where(kk, ii, -1)
        out_s[rows] = np.where(kk, ss, -np.inf)
    return out_i, out_s


def _epoch_batches(perm: np.ndarray, lengths: np.ndarray, cfg: TigerConfig, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches from the shuffled sample order ``perm``.

    ``length_buckets = 0``: consecutive slices of ``perm``. Otherwise each run of
    ``length_buckets`` batches is sorted by history length before slicing, and the batch
    order is shuffled again, so a batch holds histories of similar length (less padding
    after :func:`_trim`) while every sample is still seen once per epoch, in the same number
    of batches of the same size."""
    bs = cfg.batch_size
    if not cfg.length_buckets or not cfg.fast:
        return [perm[s : s + bs] for s in range(0, perm.size, bs)]
    chunk = bs * cfg.length_buckets
    out: list[np.ndarray] = []
    for c in range(0, perm.size, chunk):
        p = perm[c : c + chunk]
        p = p[np.argsort(lengths[p], kind="stable")]
        out.extend(p[s : s + bs] for s in range(0, p.size, bs))
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


@dataclass
class GenResult:
    """Output of :func:`train_and_evaluate_tiger`."""

    metrics: dict[str, float]
    topk: pl.DataFrame  # test stage: user_id, rank, item_id, score
    topk_idx: dict[str, np.ndarray]  # stage -> (users, k) item indices
    history: list[dict[str, float]]
    seconds: float
    cpu_seconds: float
    best_epoch: int
    model: TigerModel | None = field(default=None, repr=False)
    codec: SIDCodec | None = field(default=None, repr=False)


def _seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def train_tiger(split: SplitData, sids, config: TigerConfig | None = None, log=None):
    """Train with early stopping on validation NDCG@10; returns (model, codec, tokens, history, best_epoch)."""
    cfg = config or TigerConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = _seed_all(cfg.seed)
    codec = SIDCodec(sid_codes_for(split, sids))
    tk = _Tokens(codec, cfg, split)
    model = TigerModel(cfg, codec.n_codes, codec.levels).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    s_users, s_hist, s_tgt = _training_prefixes(split, cfg.max_history)
    s_len = (s_hist >= 0).sum(1)

    rng = np.random.default_rng(cfg.seed)
    v_users = np.arange(split.n_users)
    if cfg.max_valid_users and cfg.max_valid_users < split.n_users:
        v_users = np.sort(rng.choice(split.n_users, cfg.max_valid_users, replace=False))
    v_hist = _history_matrix([split.train_seqs[u] for u in v_users], cfg.max_history)
    v_mask = split.last_item("valid")[v_users]
    v_tgt = split.valid_target[v_users]

    history: list[dict[str, float]] = []
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    n = s_tgt.size
    start = time.perf_counter()
    cut_short = False  # the time cap or the step budget ended training inside an epoch
    steps = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).numpy()
        tot, cnt, t0 = 0.0, 0, time.perf_counter()
        for idx in _epoch_batches(perm, s_len, cfg, gen):
            src = tk.encoder_input(_trim(s_hist[idx], cfg), s_users[idx]).to(cfg.device)
            tgt = tk.decoder_target(s_tgt[idx]).to(cfg.device)
            with _autocast(cfg):
                loss = model.train_loss(src, tgt, codec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * idx.size
            cnt += idx.size
            steps += 1
            advance("TIGER training", steps, cfg.max_steps, unit="step", loss=tot / cnt)
            if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
                cut_short = True
                break
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                cut_short = True
                break
        train_seconds = time.perf_counter() - t0
        topv, _ = _rank_users(model, tk, v_hist, v_users, v_mask, cfg, cfg.k)
        m = topk_metrics(topv, v_tgt)
        rec = {"epoch": epoch, "loss": tot / cnt, "valid_ndcg@10": m["ndcg@10"], "valid_hit@10": m["hit@10"],
               "epoch_seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "steps": steps}
        rec["partial_epoch"] = cut_short
        history.append(rec)
        if log:
            log(rec)
        if m["ndcg@10"] > best:
            best, best_epoch, bad = m["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
        if cut_short:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, codec, tk, history, best_epoch


def rank_stage(model: TigerModel, tk: _Tokens, split: SplitData, stage: str, cfg: TigerConfig, k: int | None = None):
    """(items, scores) top-``k`` matrices for every user of ``stage`` (last history item masked)."""
    k = k or cfg.k
    hist = _history_matrix(split.history(stage), cfg.max_history)
    return _rank_users(model, tk, hist, np.arange(split.n_users), split.last_item(stage), cfg, k)


def topk_frame(split: SplitData, items: np.ndarray, scores: np.ndarray, codec: SIDCodec | None = None) -> pl.DataFrame:
    """Long frame ``user_id, rank (1-based), item_id, score`` (+ ``sid`` when a codec is given)."""
    u, r = np.nonzero(items >= 0)
    ids = np.asarray(split.item_ids, dtype=object)
    cols = {
        "user_id": np.asarray(split.user_ids, dtype=object)[u].tolist(),
        "rank": (r + 1).astype(np.int32),
        "item_id": ids[items[u, r]].tolist(),
    }
    if codec is not None:
        cols["sid"] = [list(map(int, codec.codes[i])) for i in items[u, r]]
    cols["score"] = scores[u, r].astype(np.float64)
    schema = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float64}
    if codec is not None:
        schema = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "sid": pl.List(pl.Int64), "score": pl.Float64}
    return pl.DataFrame({c: cols[c] for c in schema}, schema=schema)


def train_and_evaluate_tiger(
    split: SplitData, sids, config: TigerConfig | None = None, log=None, stages: tuple[str, ...] = ("valid", "test")
) -> GenResult:
    """Train TIGER on ``split`` with SIDs ``sids`` (dict item_id -> codes, or a one-method SID
    frame) and score the full catalogue on ``stages`` (validation and test by default; "test"
    is required)."""
    cfg = config or TigerConfig()
    if "test" not in stages or not set(stages) <= {"valid", "test"}:
        raise ValueError(f"stages must include 'test' and be drawn from ('valid', 'test'), got {stages}")
    w0, c0 = time.perf_counter(), time.process_time()
    model, codec, tk, hist, best_epoch = train_tiger(split, sids, cfg, log)
    topk_idx, topk_scores = {}, {}
    for stage in stages:
        topk_idx[stage], topk_scores[stage] = rank_stage(model, tk, split, stage, cfg)
    metrics = stage_metrics(split, topk_idx)
    return GenResult(
        metrics=metrics,
        topk=topk_frame(split, topk_idx["test"], topk_scores["test"]),
        topk_idx=topk_idx,
        history=hist,
        seconds=time.perf_counter() - w0,
        cpu_seconds=time.process_time() - c0,
        best_epoch=best_epoch,
        model=model,
        codec=codec,
    )


def save_tiger(result: GenResult, directory: str | Path, item_ids: list[str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (config, SID codes and, when given, the
    item id of each code row, so the model can serve users who are not in the cache)."""
    from safetensors.torch import save_file

    if result.model is None or result.codec is None:
        raise ValueError("result carries no model to save")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, d / "model.safetensors")
    meta = {"config": asdict(result.model.cfg), "codes": result.codec.codes.tolist()}
    if item_ids is not None:
        if len(item_ids) != result.codec.codes.shape[0]:
            raise ValueError(f"{len(item_ids)} item ids for {result.codec.codes.shape[0]} SID rows")
        meta["item_ids"] = [str(i) for i in item_ids]
    (d / "config.json").write_text(json.dumps(meta))
    return d


def load_tiger(directory: str | Path) -> tuple[TigerModel, SIDCodec]:
    from safetensors.torch import load_file

    d = Path(directory)
    meta = json.loads((d / "config.json").read_text())
    cfg = TigerConfig(**meta["config"])
    codec = SIDCodec(np.asarray(meta["codes"], dtype=np.int64))
    model = TigerModel(cfg, codec.n_codes, codec.levels)
    model.load_state_dict(load_file(d / "model.safetensors"))
    model.eval()
    return model, codec


def saved_item_ids(directory: str | Path) -> list[str] | None:
    """The item id of each SID row of a saved model (None for models saved without them)."""
    return json.loads((Path(directory) / "config.json").read_text()).get("item_ids")


def recommend_history(model: TigerModel, codec: SIDCodec, history: np.ndarray, k: int, *,
                      candidates: np.ndarray | None = None, user_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (item indices, summed log-probs) for one history of item indices (oldest
    first) by constrained beam search, the last item masked, exactly as the serving cache
    ranks. ``candidates`` (item indices) restricts every level to prefixes above one of them
    (the local-life mode); -1 / -inf fill slots the search could not fill."""
    cfg = model.cfg
    history = np.asarray(history, dtype=np.int64)
    if history.size == 0:
        raise ValueError("the history has no item the model knows; nothing to recommend from")
    if cfg.beams < k + 1:
        raise ValueError(f"k={k} needs beams >= {k + 1}; the model was configured with {cfg.beams}")

    class _One:  # what _Tokens reads of a split: the user ids (for the optional user token)
        user_ids = [str(user_id)]

    tk = _Tokens(codec, cfg, _One())
    hist = _history_matrix([history], cfg.max_history)
    allowed = None
    if candidates is not None:
        import scipy.sparse as sp

        from .local import allowed_masks

        c = np.unique(np.asarray(candidates, dtype=np.int64))
        cands = sp.csr_matrix((np.ones(c.size, dtype=bool), (np.zeros(c.size, dtype=np.int64), c)),
                              shape=(1, codec.codes.shape[0]))
        allowed = lambda rows: allowed_masks(codec, cands[rows])  # noqa: E731
    items, scores = _rank_users(model, tk, hist, np.zeros(1, dtype=np.int64), history[-1:], cfg, k, allowed=allowed)
    return items[0], scores[0]

