"""Decoding: trie-constrained beam search over the catalogue's SIDs and the top-K ranking built on it.

Beam search is batched over users (only the per-level loop is in Python). Every generated SID
is a real item, and every item is reachable. The beams of one user are laid side by side in one
decoder sequence with a block-diagonal causal mask (reference path) or decoded incrementally
with cached keys and values (fast path), so the encoder memory is computed once per user, not
once per beam. Masking: the README protocol masks the user's last history item, so the search
keeps ``beams >= K + 1`` beams, drops the masked item from the finished beams and keeps the best
``K`` of the rest.

Each level's distribution is a softmax over that level's codes only; the trie then removes the
codes that lead to no item, without renormalising, as in TIGER's constrained decoding.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch import nn

from ..data import SplitData
from .codec import BOS, N_SPECIAL, SIDCodec, Tokens, history_matrix
from .config import TigerConfig
from .model import TigerModel, autocast

__all__ = ["beam_search", "rank_stage", "rank_users", "recommend_history", "topk_frame", "trim"]


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
    with autocast(model.cfg):
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


def trim(hist: np.ndarray, cfg: TigerConfig) -> np.ndarray:
    """Drop the leading columns that are padding in every row (left-padded histories).

    Outputs do not change (positions are right-aligned and padding is masked). Not applied with
    a user token, whose position is fixed at the window's start."""
    if cfg.user_buckets or not cfg.fast or hist.shape[0] == 0:
        return hist
    filled = (hist >= 0).any(0)
    return hist[:, int(filled.argmax()) :] if filled.any() else hist[:, -1:]


def rank_users(
    model: TigerModel,
    tk: Tokens,
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
        src = tk.encoder_input(trim(hist[rows], cfg), users[rows]).to(cfg.device)
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



def rank_stage(model: TigerModel, tk: Tokens, split: SplitData, stage: str, cfg: TigerConfig, k: int | None = None):
    """(items, scores) top-``k`` matrices for every user of ``stage`` (last history item masked)."""
    k = k or cfg.k
    hist = history_matrix(split.history(stage), cfg.max_history)
    return rank_users(model, tk, hist, np.arange(split.n_users), split.last_item(stage), cfg, k)


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

    class _One:  # what Tokens reads of a split: the user ids (for the optional user token)
        user_ids = [str(user_id)]

    tk = Tokens(codec, cfg, _One())
    hist = history_matrix([history], cfg.max_history)
    allowed = None
    if candidates is not None:
        import scipy.sparse as sp

        from ..local import allowed_masks

        c = np.unique(np.asarray(candidates, dtype=np.int64))
        cands = sp.csr_matrix((np.ones(c.size, dtype=bool), (np.zeros(c.size, dtype=np.int64), c)),
                              shape=(1, codec.codes.shape[0]))
        allowed = lambda rows: allowed_masks(codec, cands[rows])  # noqa: E731
    items, scores = rank_users(model, tk, hist, np.zeros(1, dtype=np.int64), history[-1:], cfg, k, allowed=allowed)
    return items[0], scores[0]
