"""DIN (Zhou et al. 2018): target attention over the user's history, scored by AUC / GAUC.

Item representation (paper Table 1's "+ tokenizer" rows): the item-ID embedding concatenated
with one embedding per SID level (each level its own vocabulary; every feature 8-d, Appendix
B). "Origin" is the ID embedding alone (``sids=None``).

Data (Appendix B): every training position is a positive (history prefix -> next item), and
negatives are down-sampled at 1:4, i.e. four random items the user never clicked in training
per positive (seeded). Validation / test score each user's held-out target against four sampled
non-clicked negatives drawn with ``eval_seed``, which is fixed across variants and model
seeds, so every variant is scored on identical impressions.

Optimisation: AdamW with StepLR (x0.9 every 500 steps) as in Appendix B. The paper's learning
rate of 0.1 goes with batches of 10,240 on 50M samples; at batch 1,024 on thousands of
samples such a rate makes the 8-d embeddings oscillate, so the default is the conventional
Adam-scale 5e-3 (not tuned on any benchmark). Early stopping on validation AUC.

The item representation (:class:`ItemEncoder`), the samples, the scoring and the training loop
are shared with DIEN (``dien.py``): :func:`train_and_evaluate_din` takes the model class.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import nn

from .. import paper
from .data import SplitData
from .metrics import auc, gauc
from .tiger import sid_codes_for, training_prefixes


@dataclass
class DINConfig:
    embed_dim: int = paper.DIN_EMBED_DIM
    attn_hidden: tuple[int, ...] = (32, 16)
    mlp: tuple[int, ...] = paper.DIN_TOWER  # + the final 1-unit layer: tower [32, 16, 1]
    lr: float = paper.DIN_LR  # the paper: 0.1 (see paper.APPENDIX_B)
    weight_decay: float = 1e-4
    step_size: int = paper.DIN_LR_STEP
    gamma: float = paper.DIN_LR_GAMMA
    batch_size: int = paper.DIN_BATCH  # the paper: 10,240
    epochs: int = 5
    patience: int = 2
    max_history: int = 20
    neg_ratio: int = paper.DIN_NEGATIVE_RATIO
    eval_negatives: int = paper.DIN_NEGATIVE_RATIO
    eval_seed: int = 2024
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None


def build_mlp(dims: list[int], act: bool = True) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with a PReLU between two (none when not ``act``)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 and act:
            layers.append(nn.PReLU())
    return nn.Sequential(*layers)


class ItemEncoder(nn.Module):
    """Item representation shared by DIN and DIEN: ID embedding (+ one embedding per SID level).

    Item index 0 is padding (real items are shifted by one). Subclasses add their layers after
    calling ``super().__init__`` and may override the two training hooks.
    """

    def __init__(self, n_items: int, codes: np.ndarray | None, cfg: DINConfig):
        super().__init__()
        e = cfg.embed_dim
        self.item_emb = nn.Embedding(n_items + 1, e, padding_idx=0)
        if codes is not None:
            pad_row = np.zeros((1, codes.shape[1]), dtype=np.int64)
            self.register_buffer("codes", torch.from_numpy(np.vstack([pad_row, codes + 1])))
            self.sid_emb = nn.ModuleList(
                nn.Embedding(int(codes[:, lvl].max()) + 2, e, padding_idx=0) for lvl in range(codes.shape[1])
            )
            d = e * (1 + codes.shape[1])
        else:
            self.codes = None
            self.sid_emb = None
            d = e
        self.dim = d

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, dim): every item's representation, row 0 the (zero) padding row.

        Built once per forward and indexed, instead of one lookup per SID level at every
        history position: the same values, with the backward summed over the catalogue's rows
        rather than over every position of the batch (with :meth:`DIN.activation_weights`,
        1.8x faster to train on the CPU: ``benchmarks/bench_din.py``).
        """
        parts = [self.item_emb.weight]
        if self.sid_emb is not None:
            parts += [emb(self.codes[:, lvl]) for lvl, emb in enumerate(self.sid_emb)]
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def represent(self, items: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """items: shifted indices (0 = pad) of any shape -> (..., dim); ``table`` is
        :meth:`item_table`, passed in when one forward represents several index tensors."""
        return nn.functional.embedding(items, self.item_table() if table is None else table)

    def training_extras(self, split: SplitData, cfg: DINConfig, prefix_users: np.ndarray, clicked: np.ndarray):
        """Per-training-prefix arrays (first axis = prefix) handed to :meth:`training_loss`; None = none."""
        return None

    def training_loss(self, hist: torch.Tensor, target: torch.Tensor, label: torch.Tensor, extras) -> torch.Tensor:
        """L_target: binary cross-entropy of the click logit (``extras``: the batch's rows of
        :meth:`training_extras`)."""
        return nn.functional.binary_cross_entropy_with_logits(self(hist, target), label)


class DIN(ItemEncoder):
    """Deep Interest Network; item index 0 is padding (real items are shifted by one)."""

    def __init__(self, n_items: int, codes: np.ndarray | None, cfg: DINConfig):
        super().__init__(n_items, codes, cfg)
        d = self.dim
        self.attn = build_mlp([4 * d, *cfg.attn_hidden, 1])
        self.tower = build_mlp([3 * d, *cfg.mlp, 1])

    def activation_weights(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DIN's activation unit: the MLP ``attn`` of [h, t, h - t, h * t] for each history
        position, (B, H, d) and (B, d) -> (B, H).

        Its first layer is linear, so W [h, t, h - t, h * t] = (W1 + W3) h + (W2 - W3) t +
        W4 (h * t) with W = [W1 W2 W3 W4] split by input block: the same function and the same
        parameters, but the target's term is computed once per sample instead of once per
        history position, and the (B, H, 4d) input is never built (tested against the
        concatenated form)."""
        first = self.attn[0]
        w1, w2, w3, w4 = first.weight.split(h.shape[-1], dim=1)
        z = (nn.functional.linear(h, w1 + w3) + nn.functional.linear(h * t.unsqueeze(1), w4)
             + nn.functional.linear(t, w2 - w3, first.bias).unsqueeze(1))
        return self.attn[1:](z).squeeze(-1)

    def forward(self, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        table = self.item_table()
        h = self.represent(hist, table)  # (B, H, d)
        t = self.represent(target, table)  # (B, d)
        w = self.activation_weights(h, t)
        w = w.masked_fill(hist == 0, 0.0)  # no softmax, as in DIN; padding contributes nothing
        interest = (w.unsqueeze(-1) * h).sum(1)
        return self.tower(torch.cat([interest, t, interest * t], dim=-1)).squeeze(-1)


class PrintedDIN(DIN):
    """DIN computed as printed: per-position lookups of the ID and of each SID level,
    concatenated, and the activation unit's MLP over the built [h, t, h - t, h * t]. The same
    parameters as :class:`DIN`; the reference its forward is tested and benchmarked against
    (``benchmarks/bench_din.py``), never the default."""

    def item_table(self) -> None:
        return None  # looks up every position instead (``represent``)

    def represent(self, items: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.item_emb(items)]
        if self.sid_emb is not None:
            c = self.codes[items]
            parts += [emb(c[..., lvl]) for lvl, emb in enumerate(self.sid_emb)]
        return torch.cat(parts, dim=-1)

    def activation_weights(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = t.unsqueeze(1).expand_as(h)
        return self.attn(torch.cat([h, te, h - te, h * te], dim=-1)).squeeze(-1)


def _padded(histories: list[np.ndarray], h: int) -> np.ndarray:
    """(n, h) shifted item indices (0 = pad), right-aligned."""
    out = np.zeros((len(histories), h), dtype=np.int64)
    for i, s in enumerate(histories):
        t = np.asarray(s[-h:], dtype=np.int64) + 1
        if t.size:
            out[i, h - t.size :] = t
    return out


def _user_item_keys(split: SplitData, train_only: bool) -> np.ndarray:
    """Sorted ``user * n_items + item`` keys of the items each user clicked (training only, or
    training plus both held-out targets)."""
    keys = []
    n = split.n_items
    for u, s in enumerate(split.train_seqs):
        items = s if train_only else np.concatenate([s, [split.valid_target[u], split.test_target[u]]])
        keys.append(u * n + np.unique(items))
    return np.sort(np.concatenate(keys))


def sample_negatives(
    split: SplitData, users: np.ndarray, per: int, seed: int | tuple[int, ...], clicked: np.ndarray
) -> np.ndarray:
    """(len(users), per) random items each user never clicked (rejection sampling, seeded;
    ``seed`` is anything ``np.random.default_rng`` takes, e.g. ``(seed, stream)``)."""
    if split.n_items < 2:
        raise ValueError("need at least two items to sample negatives")
    rng = np.random.default_rng(seed)
    n = split.n_items
    neg = rng.integers(0, n, size=(users.size, per))
    for _ in range(100):
        key = users[:, None] * n + neg
        pos = np.searchsorted(clicked, key).clip(max=clicked.size - 1)
        bad = clicked[pos] == key
        if not bad.any():
            break
        neg[bad] = rng.integers(0, n, size=int(bad.sum()))
    return neg


def build_training_samples(split: SplitData, cfg: DINConfig, clicked: np.ndarray):
    """Positives = every next-item position of the training sequences; 1:neg_ratio negatives.

    Returns the user of each prefix, ``rows`` (each sample's prefix index into ``hist``),
    ``hist``, ``item``, ``label``."""
    users_a, hist, targets = training_prefixes(split, cfg.max_history)
    hist = hist + 1  # -1 pad -> 0
    neg = sample_negatives(split, users_a, cfg.neg_ratio, cfg.seed, clicked)
    rep = cfg.neg_ratio + 1
    item = np.concatenate([np.asarray(targets)[:, None], neg], axis=1).reshape(-1)
    label = np.tile(np.r_[1.0, np.zeros(cfg.neg_ratio)], users_a.size)
    return users_a, np.repeat(np.arange(users_a.size), rep), hist, item, label


def build_eval_samples(split: SplitData, stage: str, cfg: DINConfig, clicked: np.ndarray):
    """Each user's stage target plus ``eval_negatives`` negatives (``eval_seed``, variant-independent)."""
    users = np.arange(split.n_users)
    seed = cfg.eval_seed + (0 if stage == "valid" else 1)
    neg = sample_negatives(split, users, cfg.eval_negatives, seed, clicked)
    hist = _padded(split.history(stage), cfg.max_history)
    rep = cfg.eval_negatives + 1
    item = np.concatenate([split.target(stage)[:, None], neg], axis=1).reshape(-1)
    label = np.tile(np.r_[1.0, np.zeros(cfg.eval_negatives)], users.size)
    return np.repeat(users, rep), hist, item, label


@torch.no_grad()
def _score(model: nn.Module, rows, hist, item, cfg: DINConfig, batch: int = 8192) -> np.ndarray:
    model.eval()
    out = np.empty(item.size, dtype=np.float64)
    for s in range(0, item.size, batch):
        sl = slice(s, s + batch)
        h = torch.from_numpy(hist[rows[sl]]).to(cfg.device)
        t = torch.from_numpy(item[sl] + 1).to(cfg.device)
        out[sl] = model(h, t).float().cpu().numpy()
    return out


@dataclass
class DiscResult:
    """Output of :func:`train_and_evaluate_din` / ``train_and_evaluate_dien``; ``metrics`` = auc,
    gauc (test), valid_auc, valid_gauc."""

    metrics: dict[str, float]
    seconds: float
    cpu_seconds: float
    history: list[dict[str, float]]
    best_epoch: int
    test_scores: pl.DataFrame = field(repr=False)  # user_id, item_id, label, score


def train_and_evaluate_din(
    split: SplitData, sids=None, config: DINConfig | None = None, log=None, *, model_cls: type[ItemEncoder] = DIN
) -> DiscResult:
    """Train DIN (Origin when ``sids`` is None, else ID + SID embeddings); AUC / GAUC on valid and test.

    ``model_cls`` swaps the architecture (an :class:`ItemEncoder` built as ``model_cls(n_items,
    codes, config)``; DIEN passes its own) while samples, optimiser, early stopping and scoring
    stay identical.
    """
    cfg = config or DINConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    w0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    codes = sid_codes_for(split, sids) if sids is not None else None
    train_clicked = _user_item_keys(split, train_only=True)
    prefix_users, rows, hist, item, label = build_training_samples(split, cfg, train_clicked)
    clicked = _user_item_keys(split, train_only=False)
    ev = {st: build_eval_samples(split, st, cfg, clicked) for st in ("valid", "test")}

    model = model_cls(split.n_items, codes, cfg).to(cfg.device)
    extras = model.training_extras(split, cfg, prefix_users, train_clicked)
    samples = (rows, torch.from_numpy(hist), item, label, None if extras is None else torch.from_numpy(extras))
    history, best_epoch = _fit(model, samples, ev["valid"], cfg, gen, log)
    metrics, test_frame = _final_scores(model, split, ev, cfg)
    return DiscResult(
        metrics=metrics,
        seconds=time.perf_counter() - w0,
        cpu_seconds=time.process_time() - c0,
        history=history,
        best_epoch=best_epoch,
        test_scores=test_frame,
    )


def _fit(model: ItemEncoder, samples, valid, cfg: DINConfig, gen: torch.Generator, log) -> tuple[list[dict], int]:
    """AdamW + StepLR over the training ``samples`` (prefix rows, histories, items, labels,
    extras), early-stopped on validation AUC; leaves the best epoch's weights in ``model`` and
    returns (per-epoch history, best epoch)."""
    rows, hist_t, item, label, extras_t = samples
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(item.size, generator=gen)
        tot = 0.0
        for s in range(0, item.size, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size].numpy()
            h = hist_t[rows[idx]].to(cfg.device)
            t = torch.from_numpy(item[idx] + 1).to(cfg.device)
            y = torch.from_numpy(label[idx]).float().to(cfg.device)
            ex = None if extras_t is None else extras_t[rows[idx]].to(cfg.device)
            loss = model.training_loss(h, t, y, ex)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * idx.size
        vr, vh, vi, vl = valid
        v_auc = auc(vl, _score(model, vr, vh, vi, cfg))
        rec = {"epoch": epoch, "loss": tot / item.size, "valid_auc": v_auc}
        history.append(rec)
        if log:
            log(rec)
        if v_auc > best:
            best, best_epoch, bad = v_auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, best_epoch


def _final_scores(model: ItemEncoder, split: SplitData, ev: dict, cfg: DINConfig) -> tuple[dict[str, float], pl.DataFrame]:
    """AUC / GAUC on the validation and test impressions ``ev``, and the scored test impressions
    (``user_id, item_id, label, score``)."""
    metrics: dict[str, float] = {}
    test_frame = None
    for st, prefix in (("valid", "valid_"), ("test", "")):
        r, h, i, lab = ev[st]
        sc = _score(model, r, h, i, cfg)
        metrics[f"{prefix}auc"] = auc(lab, sc)
        metrics[f"{prefix}gauc"] = gauc(r, lab, sc)
        if st == "test":
            test_frame = pl.DataFrame(
                {
                    "user_id": np.asarray(split.user_ids, dtype=object)[r].tolist(),
                    "item_id": np.asarray(split.item_ids, dtype=object)[i].tolist(),
                    "label": lab.astype(np.int8),
                    "score": sc,
                },
                schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "label": pl.Int8, "score": pl.Float64},
            )
    return metrics, test_frame
