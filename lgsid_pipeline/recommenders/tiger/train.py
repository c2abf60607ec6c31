"""TIGER training: the batches of an epoch, one optimiser step, early stopping on validation
NDCG@10, the train-and-score entry point, and saving / loading a trained model."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ...progress import advance
from ..data import SplitData
from ..heuristics import stage_metrics
from ..metrics import topk_metrics
from .beam import rank_stage, rank_users, topk_frame, trim
from .codec import SIDCodec, Tokens, history_matrix, sid_codes_for, training_prefixes
from .config import TigerConfig
from .model import TigerModel, autocast

__all__ = ["GenResult", "epoch_batches", "load_tiger", "save_tiger", "saved_item_ids", "seed_all", "train_and_evaluate_tiger",
           "train_step", "train_tiger"]


def epoch_batches(perm: np.ndarray, lengths: np.ndarray, cfg: TigerConfig, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches from the shuffled sample order ``perm``.

    ``length_buckets = 0``: consecutive slices of ``perm``. Otherwise each run of
    ``length_buckets`` batches is sorted by history length before slicing, and the batch
    order is shuffled again, so a batch holds histories of similar length (less padding
    after :func:`trim`) while every sample is still seen once per epoch, in the same number
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


def seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)



def train_step(model: TigerModel, opt: torch.optim.Optimizer, tk: Tokens, samples, idx: np.ndarray) -> torch.Tensor:
    """One optimiser step on the training prefixes ``idx`` of ``samples`` (the ``(users,
    histories, targets)`` of :func:`training_prefixes`); returns the batch's detached mean loss."""
    users, hist, targets = samples
    cfg = tk.cfg
    src = tk.encoder_input(trim(hist[idx], cfg), users[idx]).to(cfg.device)
    tgt = tk.decoder_target(targets[idx]).to(cfg.device)
    with autocast(cfg):
        loss = model.train_loss(src, tgt, tk.codec)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _validation_set(split: SplitData, cfg: TigerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The early-stopping users (every user, or a seeded subset of ``max_valid_users``) with
    their training histories, masked last items and validation targets."""
    rng = np.random.default_rng(cfg.seed)
    users = np.arange(split.n_users)
    if cfg.max_valid_users and cfg.max_valid_users < split.n_users:
        users = np.sort(rng.choice(split.n_users, cfg.max_valid_users, replace=False))
    hist = history_matrix([split.train_seqs[u] for u in users], cfg.max_history)
    return users, hist, split.last_item("valid")[users], split.valid_target[users]


def _train_epoch(model: TigerModel, opt, tk: Tokens, samples, lengths: np.ndarray, gen: torch.Generator,
                 steps: int, start: float) -> tuple[float, int, bool]:
    """One shuffled pass over the training prefixes, ended early by the time cap (counted from
    ``start``) or the step budget; returns (mean loss, steps so far, whether a cap ended it)."""
    cfg = tk.cfg
    perm = torch.randperm(lengths.size, generator=gen).numpy()
    tot, cnt = 0.0, 0
    for idx in epoch_batches(perm, lengths, cfg, gen):
        tot += float(train_step(model, opt, tk, samples, idx)) * idx.size
        cnt += idx.size
        steps += 1
        advance("TIGER training", steps, cfg.max_steps, unit="step", loss=tot / cnt)
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            return tot / cnt, steps, True
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            return tot / cnt, steps, True
    return tot / cnt, steps, False


def train_tiger(split: SplitData, sids, config: TigerConfig | None = None, log=None):
    """Train with early stopping on validation NDCG@10; returns (model, codec, tokens, history, best_epoch)."""
    cfg = config or TigerConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = seed_all(cfg.seed)
    codec = SIDCodec(sid_codes_for(split, sids))
    tk = Tokens(codec, cfg, split)
    model = TigerModel(cfg, codec.n_codes, codec.levels).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    samples = training_prefixes(split, cfg.max_history)
    lengths = (samples[1] >= 0).sum(1)
    v_users, v_hist, v_mask, v_tgt = _validation_set(split, cfg)

    history: list[dict[str, float]] = []
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    start = time.perf_counter()
    steps = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss, steps, cut_short = _train_epoch(model, opt, tk, samples, lengths, gen, steps, start)
        train_seconds = time.perf_counter() - t0
        topv, _ = rank_users(model, tk, v_hist, v_users, v_mask, cfg, cfg.k)
        m = topk_metrics(topv, v_tgt)
        rec = {"epoch": epoch, "loss": loss, "valid_ndcg@10": m["ndcg@10"], "valid_hit@10": m["hit@10"],
               "epoch_seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "steps": steps}
        rec["partial_epoch"] = cut_short  # the time cap or the step budget ended training inside the epoch
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
