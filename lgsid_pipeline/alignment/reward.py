"""Geography-aware reward model R (paper Eq. 2-4).

Each anchor item i contributes one list of K+1 prompts (Eq. 1): slot 0 is its content at its
true location, slots 1..K its content at the locations of K mismatched items sorted near->far.
The prompts are encoded by the frozen base encoder into ``E (A, K+1, d)``; a two-layer MLP
scores every slot independently (Eq. 2) and is trained list-wise against the soft distance
labels of Eq. 3.

Eq. 4 as printed, ``-sum_j p_ij log sigma(r_ij)`` with every ``p_ij > 0``, is minimised by
sending every score to +inf: it has no term that prefers near over far locations. We read it
as a list-wise objective with targets proportional to ``p``:

- ``listnet`` (default): softmax cross-entropy between ``p / sum(p)`` and ``softmax(r)``; its
  minimiser is ``r_ij = log p_ij + c``, which orders locations exactly by nearness.
- ``soft_bce``: binary cross-entropy against the soft label ``p / (K+1)`` in (0, 1]; its
  minimiser is ``sigma(r_ij) = p_ij / (K+1)``, again monotone in nearness.
- ``literal``: the printed formula, kept only so the test suite can show it is degenerate.

The point-wise variant (the paper's DPO-PR row) scores the true location against one
mismatched location with plain BCE (true = 1, mismatched = 0).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F

from lgsid_pipeline.alignment import city_lists
from lgsid_pipeline.train_state import (
    atomic_save_tensors,
    atomic_write_text,
    load_checkpoint,
    load_json,
    load_tensors,
    restore_optimizer,
    save_checkpoint,
)

REWARD_LOSSES = ("listnet", "soft_bce", "literal")
ListwiseLoss = Literal[REWARD_LOSSES]
REWARD_MODES = ("listwise", "pointwise")
RewardMode = Literal[REWARD_MODES]


# R's training defaults (the pipeline's RewardSettings cite these; one home)
HIDDEN = 256
EPOCHS = 40
LR = 1e-3
BATCH_SIZE = 64


# -- data -------------------------------------------------------------------------------------

def soft_labels(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """The distance soft labels (:func:`lgsid_pipeline.alignment.city_lists.soft_labels`, K = the
    common list length) as float32 for R's training tensors."""
    return city_lists.soft_labels(ranks, k).to(torch.float32)


def common_list_length(prompts_df: pl.DataFrame, keep_share: float = 0.9) -> int:
    """The largest K that at least ``keep_share`` of the anchors' lists reach (at least 1).

    After :func:`~lgsid_pipeline.alignment.negatives.dedupe_prompt_lists` lists differ in length; R trains
    on fixed (A, K+1) tensors, so lists are cut to their K nearest negatives and shorter ones left
    out. This K keeps most anchors without letting one long list set the length.
    """
    if not 0.0 < keep_share <= 1.0:
        raise ValueError(f"keep_share must be in (0, 1], got {keep_share}")
    if prompts_df.height == 0:
        raise ValueError("prompts_df is empty")
    lens = np.sort(prompts_df.group_by("anchor_id").agg(pl.col("rank").max())["rank"].to_numpy())[::-1]
    k = int(lens[max(0, int(np.ceil(keep_share * len(lens))) - 1)])
    return max(k, 1)


def encode_prompt_lists(encoder, prompts_df: pl.DataFrame,
                        k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Encode the ``mismatched_prompts`` frame into ``(E (A, K+1, d), labels (A, K+1), anchor_ids)``.

    ``prompts_df`` has one row per (anchor_id, rank) with rank 0 the anchor's true prompt and
    ranks 1..K the mismatched prompts near->far. With ``k`` given, each list is cut to its ``k``
    nearest negatives; anchors whose list is shorter (fewer negatives than ``k``, or than the
    longest list when ``k`` is None, e.g. in a tiny city) are dropped. Labels are
    :func:`soft_labels` of ``rank``, recomputed here.
    """
    missing = {"anchor_id", "rank", "prompt"} - set(prompts_df.columns)
    if missing:
        raise ValueError(f"prompts_df is missing column(s) {sorted(missing)}")
    if prompts_df.height == 0:
        raise ValueError("prompts_df is empty")
    df = prompts_df.select(
        pl.col("anchor_id").cast(pl.Utf8), pl.col("rank").cast(pl.Int64), pl.col("prompt").cast(pl.Utf8)
    )
    if df["prompt"].null_count() or df["rank"].null_count():
        row = df.with_row_index().filter(pl.col("prompt").is_null() | pl.col("rank").is_null())["index"][0]
        raise ValueError(f"prompts_df row {row} has a null prompt or rank")
    if k is None:
        k = int(df["rank"].max())
    elif k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    else:
        df = df.filter(pl.col("rank") <= k)
    if k < 1:
        raise ValueError("prompts_df has no mismatched prompts (max rank < 1)")
    full = (
        df.group_by("anchor_id")
        .agg(pl.col("rank").n_unique().alias("n"), pl.col("rank").min().alias("lo"), pl.len().alias("rows"))
        .filter((pl.col("n") == k + 1) & (pl.col("rows") == k + 1) & (pl.col("lo") == 0))
    )
    if full.height == 0:
        raise ValueError(f"no anchor in prompts_df has a complete list of ranks 0..{k}")
    df = df.join(full.select("anchor_id"), on="anchor_id").sort("anchor_id", "rank")
    emb = encoder.encode(df["prompt"].to_list())
    a = full.height
    e = torch.from_numpy(emb).reshape(a, k + 1, -1)
    ranks = torch.tensor(df["rank"].to_numpy().reshape(a, k + 1))
    anchors = df["anchor_id"].to_list()[:: k + 1]
    return e, soft_labels(ranks, k), anchors


# -- model ------------------------------------------------------------------------------------
class RewardModel(nn.Module):
    """Eq. 2: r_ij = MLP(E_j^i), a two-layer MLP giving one scalar (logit) per embedding."""

    def __init__(self, d: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        if d < 1 or hidden < 1:
            raise ValueError(f"RewardModel needs d >= 1 and hidden >= 1, got d={d}, hidden={hidden}")
        self.d, self.hidden = d, hidden
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        if e.shape[-1] != self.d:
            raise ValueError(f"RewardModel expects embeddings of dim {self.d}, got {tuple(e.shape)}")
        return self.net(e).squeeze(-1)


# -- losses -----------------------------------------------------------------------------------
def reward_loss(scores: torch.Tensor, labels: torch.Tensor, loss: ListwiseLoss = "listnet") -> torch.Tensor:
    """Eq. 4 (list-wise reading): scores and labels are (A, K+1); returns the batch mean."""
    if loss == "listnet":
        # Eq. 4: targets p/sum(p), softmax cross-entropy over each list (ListNet top-1).
        target = labels / labels.sum(-1, keepdim=True)
        return -(target * F.log_softmax(scores, dim=-1)).sum(-1).mean()
    if loss == "soft_bce":
        # Eq. 4: weighted BCE against the soft label p / (K+1) in (0, 1].
        y = labels / labels.amax(-1, keepdim=True)
        return F.binary_cross_entropy_with_logits(scores, y, reduction="none").sum(-1).mean()
    if loss == "literal":
        # Eq. 4 exactly as printed: -1/N sum_i sum_j p_ij log sigma(r_ij). Degenerate (all r -> +inf).
        return -(labels * F.logsigmoid(scores)).sum(-1).mean()
    raise ValueError(f"unknown reward loss {loss!r}; expected listnet|soft_bce|literal")


def pointwise_loss(score_true: torch.Tensor, score_neg: torch.Tensor) -> torch.Tensor:
    """Point-wise reward (DPO-PR row): BCE with the true location = 1 and a mismatched one = 0."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(score_true, torch.ones_like(score_true))
        + F.binary_cross_entropy_with_logits(score_neg, torch.zeros_like(score_neg))
    )


# -- metrics ----------------------------------------------------------------------------------
def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1).to(torch.float64)


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-list Spearman(score, label) and NDCG (gain = label), averaged over lists; top-1 hit."""
    rs, rl = _ranks(scores), _ranks(labels)
    rs = rs - rs.mean(-1, keepdim=True)
    rl = rl - rl.mean(-1, keepdim=True)
    spearman = (rs * rl).sum(-1) / (rs.norm(dim=-1) * rl.norm(dim=-1)).clamp_min(1e-12)
    disc = 1.0 / torch.log2(torch.arange(scores.shape[-1], dtype=torch.float64) + 2.0)
    gains = torch.gather(labels.double(), -1, scores.argsort(-1, descending=True))
    ideal = labels.double().sort(-1, descending=True).values
    ndcg = (gains * disc).sum(-1) / (ideal * disc).sum(-1)
    top1 = (scores.argmax(-1) == labels.argmax(-1)).double()
    return {"spearman": float(spearman.mean()), "ndcg": float(ndcg.mean()), "top1": float(top1.mean())}


# -- training ---------------------------------------------------------------------------------
@dataclass
class RewardResult:
    model: RewardModel
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _split(a: int, holdout_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 <= holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in [0, 1), got {holdout_frac}")
    perm = torch.randperm(a, generator=torch.Generator().manual_seed(seed))
    n_hold = int(round(a * holdout_frac))
    if holdout_frac > 0 and a >= 2:
        n_hold = min(max(n_hold, 1), a - 1)
    return perm[n_hold:], perm[:n_hold]


def _check_lists(E: torch.Tensor, labels: torch.Tensor, mode: str) -> None:
    """Refuse prompt-list tensors R cannot train on."""
    if E.ndim != 3:
        raise ValueError(f"E must be (anchors, K+1, d), got shape {tuple(E.shape)}")
    if labels.shape != E.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match E {tuple(E.shape[:2])}")
    if E.shape[1] < 2:
        raise ValueError("each list needs the true location and at least one mismatched location")
    if mode not in ("listwise", "pointwise"):
        raise ValueError(f"mode must be listwise|pointwise, got {mode!r}")
    if not torch.isfinite(E).all():
        raise ValueError("E contains non-finite values")


def _resume(ckpt: Path | None, model: RewardModel, opt: torch.optim.Optimizer,
            signature: dict) -> tuple[int, int, list[dict]]:
    """(start epoch, step, history) from the checkpoint in ``ckpt`` (model and optimizer restored),
    or a fresh start."""
    if ckpt is None or (state := load_checkpoint(ckpt)) is None:
        return 0, 0, []
    model_t, opt_t, meta = state
    if meta.get("signature") != signature:
        raise ValueError(f"checkpoint in {ckpt} was written for different data/settings: "
                         f"{meta.get('signature')} != {signature}")
    model.load_state_dict(model_t)
    restore_optimizer(opt, opt_t, meta["optimizer"])
    return meta["epoch"], meta["step"], meta["history"]


def _train_epoch(model: RewardModel, opt: torch.optim.Optimizer, E: torch.Tensor, labels: torch.Tensor,
                 order: torch.Tensor, g: torch.Generator, *, mode: str, loss: ListwiseLoss,
                 batch_size: int) -> tuple[float, int, int]:
    """One pass over ``order`` in batches; returns (summed loss x batch size, anchors seen, steps)."""
    k1 = E.shape[1]
    true_slot = labels.argmax(-1)
    model.train()
    total, seen, steps = 0.0, 0, 0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        if mode == "listwise":
            batch_loss = reward_loss(model(E[idx]), labels[idx], loss)
        else:
            rows = torch.arange(len(idx))
            neg = torch.randint(1, k1, (len(idx),), generator=g)
            neg = torch.where(neg <= true_slot[idx], neg - 1, neg)  # any slot but the true one
            scores = model(E[idx])
            batch_loss = pointwise_loss(scores[rows, true_slot[idx]], scores[rows, neg])
        opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        opt.step()
        steps += 1
        total += float(batch_loss.detach()) * len(idx)
        seen += len(idx)
    return total, seen, steps


def _fit_metrics(model: RewardModel, untrained: RewardModel, E: torch.Tensor, labels: torch.Tensor,
                 train_idx: torch.Tensor, hold_idx: torch.Tensor, metrics: dict) -> dict:
    """``metrics`` plus the ranking metrics of R and the untrained MLP on the held-out lists (the
    training lists when none is held out) and of R on the training lists."""
    model.eval()
    eval_idx = hold_idx if len(hold_idx) else train_idx
    with torch.no_grad():
        for name, m in (("heldout", model), ("untrained", untrained)):
            for key, v in ranking_metrics(m(E[eval_idx]), labels[eval_idx]).items():
                metrics[f"{name}_{key}"] = v
        for key, v in ranking_metrics(model(E[train_idx]), labels[train_idx]).items():
            metrics[f"train_{key}"] = v
    return metrics


def train_reward_model(
    E: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: RewardMode = "listwise",
    loss: ListwiseLoss = "listnet",
    hidden: int = HIDDEN,
    epochs: int = EPOCHS,
    lr: float = LR,
    weight_decay: float = 0.0,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    holdout_frac: float = 0.2,
    checkpoint_dir: Path | str | None = None,
) -> RewardResult:
    """Train R on prompt lists; report held-out Spearman/NDCG against an untrained MLP (same seed).

    Resumable: with ``checkpoint_dir`` the state is saved after every epoch and a later call
    with the same arguments continues from the last completed epoch.
    """
    _check_lists(E, labels, mode)
    E, labels = E.float(), labels.float()
    a, k1, d = E.shape
    train_idx, hold_idx = _split(a, holdout_frac, seed)

    torch.manual_seed(seed)
    model = RewardModel(d, hidden)
    untrained = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    signature = {"a": a, "k1": k1, "d": d, "mode": mode, "loss": loss, "hidden": hidden,
                 "seed": seed, "lr": lr, "batch_size": batch_size, "holdout_frac": holdout_frac}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, step, history = _resume(ckpt, model, opt, signature)

    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        total, seen, steps = _train_epoch(model, opt, E, labels, order, g, mode=mode, loss=loss,
                                          batch_size=batch_size)
        step += steps
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1)})
        if ckpt is not None:
            save_checkpoint(ckpt, model.state_dict(), opt,
                            {"epoch": epoch + 1, "step": step, "history": history, "signature": signature})

    metrics: dict = {"n_train": int(len(train_idx)), "n_heldout": int(len(hold_idx)), "k": k1 - 1,
                     "epochs": epochs, "steps": step, "seconds": time.perf_counter() - t0,
                     "mode": mode, "loss": loss}
    metrics = _fit_metrics(model, untrained, E, labels, train_idx, hold_idx, metrics)
    return RewardResult(model=model, history=history, metrics=metrics)


# -- persistence ------------------------------------------------------------------------------
def save_reward_model(model: RewardModel, path: Path | str) -> Path:
    """Write ``reward_model.safetensors`` + ``reward_model.json`` into directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.state_dict(), path / "reward_model.safetensors")
    atomic_write_text(path / "reward_model.json", json.dumps({"d": model.d, "hidden": model.hidden}))
    return path


def load_reward_model(path: Path | str) -> RewardModel:
    path = Path(path)
    cfg = load_json(path / "reward_model.json", "reward model config")
    try:
        model = RewardModel(int(cfg["d"]), int(cfg["hidden"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"reward model config {path / 'reward_model.json'} lacks d/hidden") from exc
    tensors = load_tensors(path / "reward_model.safetensors", "reward model weights")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"reward model weights in {path} do not match its config: {exc}") from exc
    return model.eval()


def reward_scores(model: RewardModel, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Score a batch of embeddings (N, d) with a frozen reward model."""
    with torch.no_grad():
        return model(torch.as_tensor(embeddings, dtype=torch.float32)).numpy()


# -- oracle -----------------------------------------------------------------------------------
# The oracle separates "R is wrong" from "G-DPO cannot use a right R". An oracle that only knew
# distances could not steer G-DPO: Eq. 6 differentiates R through the policy's embeddings, so a
# score that ignores the embedding gives no gradient. Our reading: the oracle is the Eq. 2 MLP
# fitted, on the frozen reference embeddings of G-DPO's own pair prompts, to the order that the
# true great-circle distance to the target gives (a Bradley-Terry loss on every pair). Its pair
# accuracy on those pairs is the best any R of this form can reach on these embeddings.
@dataclass
class OracleResult:
    model: RewardModel
    metrics: dict = field(default_factory=dict)


def oracle_preferences(d_pos_km: np.ndarray, d_neg_km: np.ndarray) -> np.ndarray:
    """+1 where i+'s location is nearer the target than i-'s, -1 where farther, 0 on ties."""
    d_pos, d_neg = np.asarray(d_pos_km, dtype=np.float64), np.asarray(d_neg_km, dtype=np.float64)
    if d_pos.shape != d_neg.shape:
        raise ValueError(f"distance arrays differ in shape: {d_pos.shape} vs {d_neg.shape}")
    if not (np.isfinite(d_pos).all() and np.isfinite(d_neg).all()):
        raise ValueError("oracle distances must be finite")
    return np.sign(d_neg - d_pos).astype(np.int8)


def train_oracle_reward(e_pos: torch.Tensor, e_neg: torch.Tensor, prefer: np.ndarray, *, hidden: int = 256,
                        epochs: int = 60, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                        holdout_frac: float = 0.2) -> OracleResult:
    """Fit R so that R(e_pos) > R(e_neg) exactly where ``prefer`` is +1 (ties are left out).

    Two fits with the same seed: one on (1 - holdout_frac) of the pairs, scored on the rest
    (``heldout_pair_acc``: how well distance generalises to unseen pairs), and the returned one on
    every pair (``pair_acc``: agreement with the distance order on the pairs G-DPO trains on;
    ``stated_pair_acc``: R(i+) > R(i-) in the pairs' own order, the figure G-DPO's metrics report).
    """
    e_pos, e_neg = torch.as_tensor(e_pos, dtype=torch.float32), torch.as_tensor(e_neg, dtype=torch.float32)
    if e_pos.shape != e_neg.shape or e_pos.ndim != 2:
        raise ValueError(f"e_pos and e_neg must both be (n, d), got {tuple(e_pos.shape)}, {tuple(e_neg.shape)}")
    s = torch.as_tensor(np.asarray(prefer), dtype=torch.float32)
    if s.shape != (e_pos.shape[0],):
        raise ValueError(f"prefer must have one entry per pair ({e_pos.shape[0]}), got {tuple(s.shape)}")
    keep = torch.nonzero(s != 0).squeeze(-1)
    if len(keep) < 2:
        raise ValueError("the oracle needs at least 2 pairs whose locations differ in distance")

    def fit(idx: torch.Tensor) -> RewardModel:
        torch.manual_seed(seed)
        model = RewardModel(e_pos.shape[1], hidden)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        for epoch in range(epochs):
            order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))]
            for b in range(0, len(order), batch_size):
                j = order[b:b + batch_size]
                loss = -F.logsigmoid(s[j] * (model(e_pos[j]) - model(e_neg[j]))).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()

    def agree(model: RewardModel, idx: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((model(e_pos[idx]) - model(e_neg[idx])) * s[idx] > 0).double().mean())

    t0 = time.perf_counter()
    train_idx, hold_idx = _split(len(keep), holdout_frac, seed)
    metrics: dict = {"pairs": int(e_pos.shape[0]), "ties_left_out": int(e_pos.shape[0] - len(keep)),
                     "distance_flips_stated_order": float((s == -1).double().mean())}
    if len(hold_idx):
        metrics["heldout_pair_acc"] = agree(fit(keep[train_idx]), keep[hold_idx])
    model = fit(keep)
    metrics["pair_acc"] = agree(model, keep)
    with torch.no_grad():
        metrics["stated_pair_acc"] = float((model(e_pos) > model(e_neg)).double().mean())
    metrics["seconds"] = time.perf_counter() - t0
    return OracleResult(model=model, metrics=metrics)
