"""G-DPO: align the text encoder with the frozen geography reward model (paper Eq. 6-8).

Policy pi_theta = the base encoder + LoRA adapters on the attention key/value projections
(r=8, dropout 0.05; Appendix B). The reference pi_ref is the *same* model with its adapters
disabled, so no second copy is held; reference embeddings never change and are computed once
and cached by text.

Preference pairs (D_mix = D_dc U D_gc, :func:`build_preference_pairs`) are triples
(target, near, far). The preferred input i+ is the target's content at the near item's
location, the dispreferred input i- the target's content at the far item's location
(``prompts.build_prompt(target, location)``). R scores both inputs under the policy and the
reference (Eq. 6).

Readings of the paper (see docs/alignment.md):
- D_gc's near item is the target itself (its true location); the far item is a random item
  outside the target's town (``outside="town"``) or city.
- D_dc: for every co-occurrence pair (a, b) kept by Eq. 5, both a and b become targets with
  the other as the near item, and a random far item outside the target's town.
- Eq. 7 is computed on the anchors' own true prompts (one per pair in the batch) and on
  L2-normalised embeddings. There ||u - v||^2 = 2 - 2 cos(u, v), so the printed
  pull-to-own-reference / push-from-other-references term is bounded in [-4, 4] and cannot
  run away; with unnormalised embeddings the push term would be unbounded below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.nn import functional as F

from lgsid_pipeline import paper
from lgsid_pipeline.plotting import pyplot, save
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, hash_files, model_files
from lgsid_pipeline.progress import advance
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt, build_prompts
from lgsid_pipeline.alignment.reward import RewardModel
from lgsid_pipeline.train_state import (
    atomic_save_tensors,
    atomic_write_text,
    load_checkpoint,
    load_json,
    load_tensors,
    restore_optimizer,
    save_checkpoint,
)

log = logging.getLogger(__name__)

PAIR_SCHEMA = {"target_id": pl.Utf8(), "near_id": pl.Utf8(), "far_id": pl.Utf8(), "source": pl.Utf8()}


# -- preference pairs (D_mix = D_dc U D_gc) -------------------------------------------------------
def _location_codes(items: pl.DataFrame, outside: str) -> np.ndarray:
    cols = ["province", "city"] + (["town"] if outside == "town" else [])
    cols = [c for c in cols if c in items.columns]
    if not cols:
        raise ValueError("items need a 'city' (and ideally 'town') column to sample outside locations")
    key = pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("") for c in cols], separator="|")
    return items.select(key.alias("k"))["k"].cast(pl.Categorical).to_physical().to_numpy()


def _sample_outside(targets: np.ndarray, codes: np.ndarray, rng: np.random.Generator,
                    rounds: int = 32) -> np.ndarray:
    """For each target index, a random item index whose location code differs (-1 if none found)."""
    far = rng.integers(0, len(codes), size=len(targets))
    bad = codes[far] == codes[targets]
    for _ in range(rounds):
        if not bad.any():
            break
        far[bad] = rng.integers(0, len(codes), size=int(bad.sum()))
        bad = codes[far] == codes[targets]
    far[bad] = -1
    return far


def build_preference_pairs(
    items: pl.DataFrame,
    cooc_pairs: pl.DataFrame | None,
    *,
    n_gc_per_item: int = paper.DMIX_FAR_PER_SAMPLE,
    seed: int = 0,
    max_pairs: int | None = None,
    use_dc: bool = True,
    use_gc: bool = True,
    outside: str = "town",
) -> pl.DataFrame:
    """D_mix = D_dc U D_gc as a frame [target_id, near_id, far_id, source ("dc" | "gc")]."""
    if "item_id" not in items.columns:
        raise ValueError("items lacks column 'item_id'")
    if outside not in ("town", "city"):
        raise ValueError(f"outside must be 'town' or 'city', got {outside!r}")
    if items["item_id"].null_count() or items["item_id"].n_unique() != items.height:
        raise ValueError("items.item_id must be non-null and unique")
    rng = np.random.default_rng(seed)
    ids = items["item_id"].cast(pl.Utf8).to_numpy()
    codes = _location_codes(items, outside)
    parts: list[pl.DataFrame] = []
    if use_gc and n_gc_per_item > 0:
        targets = np.repeat(np.arange(len(ids)), n_gc_per_item)
        far = _sample_outside(targets, codes, rng)
        ok = far >= 0
        parts.append(pl.DataFrame({"target_id": ids[targets[ok]], "near_id": ids[targets[ok]],
                                   "far_id": ids[far[ok]], "source": "gc"}, schema=PAIR_SCHEMA))
    if use_dc and cooc_pairs is not None and cooc_pairs.height > 0:
        missing = {"item_a", "item_b"} - set(cooc_pairs.columns)
        if missing:
            raise ValueError(f"cooc_pairs is missing column(s) {sorted(missing)}")
        index = pl.DataFrame({"item_id": ids, "idx": np.arange(len(ids))})
        cp = (cooc_pairs.select(pl.col("item_a").cast(pl.Utf8), pl.col("item_b").cast(pl.Utf8))
              .join(index.rename({"item_id": "item_a", "idx": "ia"}), on="item_a")
              .join(index.rename({"item_id": "item_b", "idx": "ib"}), on="item_b")
              .filter(pl.col("ia") != pl.col("ib")))
        t = np.concatenate([cp["ia"].to_numpy(), cp["ib"].to_numpy()])
        n = np.concatenate([cp["ib"].to_numpy(), cp["ia"].to_numpy()])
        far = _sample_outside(t, codes, rng)
        ok = far >= 0
        parts.append(pl.DataFrame({"target_id": ids[t[ok]], "near_id": ids[n[ok]],
                                   "far_id": ids[far[ok]], "source": "dc"}, schema=PAIR_SCHEMA))
    pairs = pl.concat(parts) if parts else pl.DataFrame(schema=PAIR_SCHEMA)
    if max_pairs is not None and pairs.height > max_pairs:
        pairs = pairs.sample(n=max_pairs, seed=seed, shuffle=True)
    return pairs


# -- losses ---------------------------------------------------------------------------------------
def gdpo_align_loss(r_pi_pos: torch.Tensor, r_pi_neg: torch.Tensor, r_ref_pos: torch.Tensor,
                    r_ref_neg: torch.Tensor, beta: float) -> torch.Tensor:
    # Eq. 6: L_align = -E log sigma(beta (R(E_pi(i+)) - R(E_pi(i-)) - R(E_ref(i+)) + R(E_ref(i-))))
    return -F.logsigmoid(beta * (r_pi_pos - r_pi_neg - r_ref_pos + r_ref_neg)).mean()


LORA_TARGETS = paper.LORA_TARGETS  # the encoder modules LoRA adapts (BERT-style names)
SIM_READINGS = ("printed", "pull")


def similarity_loss(e_pi: torch.Tensor, e_ref: torch.Tensor, reading: str = "printed") -> torch.Tensor:
    # Eq. 7: E_i [ ||E_pi(i) - E_ref(i)||^2 - 1/(|B|-1) sum_{j != i} ||E_pi(i) - E_ref(j)||^2 ],
    # on L2-normalised embeddings (bounded in [-4, 4]; see module docstring).
    # reading="pull" keeps only the first term (toward the item's own reference): the printed
    # in-batch push also pushes same-town neighbours apart, which works against clustering.
    if reading not in SIM_READINGS:
        raise ValueError(f"unknown Eq. 7 reading {reading!r}; expected one of {SIM_READINGS}")
    p, r = F.normalize(e_pi, dim=-1), F.normalize(e_ref, dim=-1)
    if reading == "pull":
        return (p - r).pow(2).sum(-1).mean()
    d2 = (p.unsqueeze(1) - r.unsqueeze(0)).pow(2).sum(-1)  # (B, B) within one batch
    own = d2.diagonal()
    b = d2.shape[0]
    if b < 2:
        return own.mean()
    others = (d2.sum(1) - own) / (b - 1)
    return (own - others).mean()


def gdpo_loss(align: torch.Tensor, sim: torch.Tensor, lam: float) -> torch.Tensor:
    # Eq. 8: L_G-DPO = L_align + lambda * L_sim
    return align + lam * sim


# -- training -------------------------------------------------------------------------------------
@dataclass
class GDPOConfig:
    beta: float = paper.DPO_BETA
    lam: float = paper.SIM_LAMBDA  # the paper prints 155: see paper.APPENDIX_B for why 0.2
    lr: float = 2e-3
    epochs: int = 1
    batch_size: int = 16
    max_steps: int | None = None
    lora_r: int = paper.LORA_RANK
    lora_alpha: int = 16
    lora_dropout: float = paper.LORA_DROPOUT
    seed: int = 0
    max_length: int | None = None  # None: the encoder's own max_length
    checkpoint_every: int = 50
    eval_pairs: int = 256
    sim_reading: str = "printed"  # Eq. 7 as printed | "pull" (own-reference term only)
    # Held-out geography selection ("trained until it helps, stopped when it hurts"): every
    # eval_every steps (0 = off) C@5 / T@5 / Top@5 of eval_items held-out items are measured; the
    # adapter kept is the evaluated step with the most headroom closed, mean over C@5 and T@5 of
    # (m - m_0) / (1 - m_0), among the steps losing at most max_top_loss of Top@5 relative to step
    # 0. Step 0 (the unchanged encoder) is a candidate, so a run that only hurts keeps Origin.
    # Training stops after `patience` evaluations without a better eligible step.
    eval_every: int = 0
    eval_items: int = 256
    max_top_loss: float = 0.05
    patience: int = 3

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lora_r", "checkpoint_every", "eval_items", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"GDPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or not 0.0 <= self.max_top_loss < 1.0:
            raise ValueError(f"GDPOConfig needs eval_every >= 0 and max_top_loss in [0, 1) "
                             f"(got {self.eval_every}, {self.max_top_loss})")
        if self.sim_reading not in SIM_READINGS:
            raise ValueError(f"GDPOConfig.sim_reading must be one of {SIM_READINGS}, got {self.sim_reading!r}")
        if self.lam < 0 or self.beta <= 0 or self.lr <= 0:
            raise ValueError(f"GDPOConfig needs lam >= 0, beta > 0, lr > 0 "
                             f"(got {self.lam}, {self.beta}, {self.lr})")


@dataclass
class GDPOResult:
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # held-out geography per evaluated step
    metrics: dict = field(default_factory=dict)
    adapter_path: Path | None = None


def pair_texts(items: pl.DataFrame, pairs: pl.DataFrame,
               template: PromptTemplate = DEFAULT_TEMPLATE) -> tuple[list[str], list[str], list[str]]:
    """(i+ texts, i- texts, anchors' true prompts) for every pair, built with Eq. 1 prompts."""
    missing = {"target_id", "near_id", "far_id"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs is missing column(s) {sorted(missing)}")
    rows = {str(r["item_id"]): r for r in items.to_dicts()}
    for col in ("target_id", "near_id", "far_id"):
        unknown = pairs.filter(~pl.col(col).cast(pl.Utf8).is_in(list(rows)))
        if unknown.height:
            raise ValueError(f"pairs.{col} has {unknown.height} id(s) not in items, e.g. {unknown[col][0]!r}")
    t, n, f = (pairs[c].cast(pl.Utf8).to_list() for c in ("target_id", "near_id", "far_id"))
    pos = [build_prompt(rows[a], rows[b], template) for a, b in zip(t, n)]
    neg = [build_prompt(rows[a], rows[b], template) for a, b in zip(t, f)]
    anc = [build_prompt(rows[a], None, template) for a in t]
    return pos, neg, anc


def _policy(encoder: TextEncoder, cfg: GDPOConfig):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(LORA_TARGETS), bias="none")
    model = get_peft_model(encoder.clone_model(), lora)
    _lora_dropout_only(model)
    return model


def _lora_dropout_only(model) -> None:
    """Base dropout off, LoRA dropout on: the policy differs from the reference only through LoRA."""
    model.eval()
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            module.train()


def _reference_cache(
    encoder: TextEncoder,
    model,
    texts: list[str],
    known: dict[str, np.ndarray] | None = None,
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """E_ref of every distinct text, computed once with adapters disabled.

    ``known`` maps texts to reference embeddings already computed by the same base encoder
    (e.g. the origin item embeddings); only the other texts are encoded, and added to it.
    """
    uniq = list(dict.fromkeys(texts))
    known = {} if known is None else known
    todo = [t for t in uniq if t not in known]
    if todo:
        with model.disable_adapter():
            emb = encoder.encode(todo, model=model, max_length=max_length)
        known.update(zip(todo, emb))
    return torch.from_numpy(np.stack([known[t] for t in uniq])), {t: i for i, t in enumerate(uniq)}


def headroom_closed(value: float, origin: float) -> float:
    """Share of Origin's headroom a metric closed: (m - m_0) / (1 - m_0) (0 where m_0 = 1)."""
    return (value - origin) / (1.0 - origin) if origin < 1.0 else 0.0


def geography_score(m: dict, m0: dict) -> float:
    """Headroom closed, mean over C@5 and T@5 (:func:`headroom_closed`)."""
    return float(np.mean([headroom_closed(m[k], m0[k]) for k in ("c@5", "t@5")]))


def select_step(evals: list[dict], max_top_loss: float) -> dict:
    """The evaluation the rule of :class:`GDPOConfig` keeps: the highest ``geography_score``
    among steps whose Top@5 is within ``max_top_loss`` (relative) of step 0's; earliest on ties."""
    base = evals[0]
    eligible = [e for e in evals if e["top@5"] >= (1.0 - max_top_loss) * base["top@5"]]
    return max(eligible, key=lambda e: (round(e["score"], 12), -e["step"]))


class _GeographyEval:
    """C@5 / T@5 / Top@5 of held-out items' true prompts under the policy (Top@5 in the origin
    space). Held-out: items that are no pair's target, when enough exist."""

    def __init__(self, encoder: TextEncoder, model, items: pl.DataFrame, pairs: pl.DataFrame,
                 template: PromptTemplate, cfg: GDPOConfig) -> None:
        from lgsid_pipeline.alignment.metrics import LEVELS

        missing = [c for _, c in LEVELS if c not in items.columns]
        if missing:
            raise ValueError(f"G-DPO eval_every needs item columns {missing} for C@5 / T@5")
        targets = pairs["target_id"].cast(pl.Utf8).unique().implode()
        pool = items.filter(~pl.col("item_id").cast(pl.Utf8).is_in(targets))
        if pool.height < min(cfg.eval_items, 32):
            pool = items
        self.items = pool.sample(n=min(cfg.eval_items, pool.height), seed=cfg.seed).sort("item_id")
        if self.items.height < 6:
            raise ValueError(f"G-DPO eval_every needs at least 6 items, got {self.items.height}")
        self.texts = build_prompts(self.items, template=template)
        self.encoder, self.model, self.max_length = encoder, model, cfg.max_length
        with model.disable_adapter():
            self.origin = encoder.encode(self.texts, model=model, max_length=cfg.max_length)

    def __call__(self, step: int, base: dict | None) -> dict:
        """The evaluation at ``step``, scored against ``base`` (step 0's; None = this is step 0)."""
        from lgsid_pipeline.alignment.metrics import geography_at_k

        self.model.eval()
        try:
            emb = self.encoder.encode(self.texts, model=self.model, max_length=self.max_length)
        finally:
            _lora_dropout_only(self.model)
        m = {k: v for k, v in geography_at_k(emb, self.origin, self.items, 5).items()
             if k in ("top@5", "p@5", "c@5", "t@5")}
        return {"step": step, **m, "score": geography_score(m, base or m)}


def plot_geography(evals: list[dict], best_step: int, path: Path | str) -> Path:
    """C@5, T@5 and Top@5 of the held-out items against the G-DPO step; the kept step marked."""
    return _plot_steps(evals, {k: k for k in ("c@5", "t@5", "top@5")}, path, "G-DPO held-out geography",
                       marker="o", vline=(best_step, f"kept (step {best_step})"))


def _adapter_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def train_gdpo(
    encoder: TextEncoder,
    reward_model: RewardModel,
    items: pl.DataFrame,
    pairs: pl.DataFrame,
    config: GDPOConfig | None = None,
    *,
    checkpoint_dir: Path | str | None = None,
    adapter_dir: Path | str | None = None,
    progress: Callable[[dict], None] | None = None,
    reference_embeddings: dict[str, np.ndarray] | None = None,
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> GDPOResult:
    """Fine-tune LoRA adapters on ``encoder`` with Eq. 8; save them as safetensors.

    ``adapter_dir`` defaults to ``checkpoint_dir / "adapter"``. With ``checkpoint_dir`` the
    adapter, optimizer state and step are saved every ``checkpoint_every`` steps and a rerun
    with the same inputs resumes from the last checkpoint. ``encoder`` itself is not modified.
    ``reference_embeddings`` (text -> embedding by this same base encoder and max_length, e.g.
    the origin embeddings of the items' true prompts) is reused and extended as the reference
    cache. ``template`` renders the Eq. 1 prompts; use the one the item embeddings use.
    """
    from peft import set_peft_model_state_dict

    cfg = config or GDPOConfig()
    if pairs.height == 0:
        raise ValueError("pairs is empty: no preference pairs to train on")
    if reward_model.d != encoder.dim:
        raise ValueError(f"reward model expects dim {reward_model.d}, encoder gives {encoder.dim}")
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if adapter_dir is None:
        if ckpt is None:
            raise ValueError("give checkpoint_dir or adapter_dir so the adapter can be saved")
        adapter_dir = ckpt / "adapter"
    adapter_dir = Path(adapter_dir)
    t_start = time.perf_counter()

    pos, neg, anc = pair_texts(items, pairs, template)
    n = len(pos)
    model = _policy(encoder, cfg)
    # Everything a step touches lives on the encoder's device (cuda when available); R scores
    # float32 embeddings whatever the encoder's dtype.
    reward_model = reward_model.to(encoder.device).eval()
    for p in reward_model.parameters():
        p.requires_grad_(False)
    ref_emb, ref_idx = _reference_cache(encoder, model, pos + neg + (anc if cfg.lam > 0 else []),
                                        reference_embeddings, cfg.max_length)
    ref_emb = ref_emb.to(encoder.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    steps_per_epoch = -(-n // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    texts_key = hashlib.sha256("\x1e".join(pos + neg).encode()).hexdigest()[:16]
    signature = {"n_pairs": n, "texts": texts_key, "encoder": encoder.version, **asdict(cfg)}
    signature.pop("max_steps"), signature.pop("epochs"), signature.pop("checkpoint_every")
    history: list[dict] = []
    evals: list[dict] = []
    step = 0
    geo = _GeographyEval(encoder, model, items, pairs, template, cfg) if cfg.eval_every > 0 else None
    best_state = _adapter_state(model)  # step 0: LoRA B = 0, i.e. the unchanged encoder
    if ckpt is not None and (state := load_checkpoint(ckpt)) is not None:
        model_t, opt_t, meta = state
        if meta.get("signature") != signature:
            raise ValueError(f"G-DPO checkpoint in {ckpt} was written for different inputs/settings")
        set_peft_model_state_dict(model, model_t)
        restore_optimizer(opt, opt_t, meta["optimizer"])
        step, history, evals = int(meta["step"]), list(meta["history"]), list(meta.get("evals", []))
        if geo is not None and evals and select_step(evals, cfg.max_top_loss)["step"] > 0:
            best_state = load_tensors(ckpt / "best_adapter.safetensors", "G-DPO best adapter")
        log.info("resuming G-DPO from step %d", step)
    stopped_early = bool(evals) and step < total_steps and bool(
        sum(1 for e in evals if e["step"] > select_step(evals, cfg.max_top_loss)["step"]) >= cfg.patience)
    if stopped_early:  # a run that stopped early stays stopped when it is called again
        total_steps = step
    if geo is not None and not evals:
        evals.append(geo(0, None))

    def evaluate() -> bool:
        """Evaluate at ``step``; keep the state if it is the new best. True = stop (patience)."""
        nonlocal best_state
        evals.append(geo(step, evals[0]))
        best = select_step(evals, cfg.max_top_loss)
        if best["step"] == step:
            best_state = _adapter_state(model)
            if ckpt is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
                atomic_save_tensors(best_state, ckpt / "best_adapter.safetensors")
        since = sum(1 for e in evals if e["step"] > best["step"])
        return since >= cfg.patience

    t_train = time.perf_counter()
    start_step = step
    while step < total_steps:
        epoch, b = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size].tolist()
        torch.manual_seed(cfg.seed * 7_919 + step)  # LoRA dropout, reproducible across resumes
        texts = [pos[i] for i in idx] + [neg[i] for i in idx] + ([anc[i] for i in idx] if cfg.lam > 0 else [])
        emb = encoder.embed_batch(texts, model=model, max_length=cfg.max_length).float()
        ref = ref_emb[[ref_idx[t] for t in texts]]
        m = len(idx)
        r_pi, r_ref = reward_model(emb[: 2 * m]), reward_model(ref[: 2 * m])
        align = gdpo_align_loss(r_pi[:m], r_pi[m:], r_ref[:m], r_ref[m:], cfg.beta)
        sim = similarity_loss(emb[2 * m:], ref[2 * m:], cfg.sim_reading) if cfg.lam > 0 else torch.zeros(())
        total = gdpo_loss(align, sim, cfg.lam)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        step += 1
        rec = {"step": step, "epoch": epoch + 1, "align": float(align.detach()), "sim": float(sim.detach()),
               "total": float(total.detach()),
               "margin": float((r_pi[:m] - r_pi[m:] - r_ref[:m] + r_ref[m:]).detach().mean())}
        history.append(rec)
        if progress is not None:
            progress({**rec, "total_steps": total_steps})
        advance("G-DPO", step, total_steps, unit="step", align=rec["align"], sim=rec["sim"])
        if step % 10 == 0:
            log.info("G-DPO step %d/%d align=%.4f sim=%.4f", step, total_steps, rec["align"], rec["sim"])
        stop = False
        if geo is not None and (step % cfg.eval_every == 0 or step == total_steps):
            stop = evaluate()
        if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == total_steps or stop):
            save_checkpoint(ckpt, _adapter_state(model), opt,
                            {"step": step, "history": history, "signature": signature, "evals": evals})
        if stop:
            stopped_early = step < total_steps
            log.info("G-DPO stops at step %d: %d evaluations without a better held-out geography",
                     step, cfg.patience)
            break
    train_seconds = time.perf_counter() - t_train
    selection: dict = {}
    if geo is not None:
        best = select_step(evals, cfg.max_top_loss)
        set_peft_model_state_dict(model, best_state)  # keep the selected step's adapter
        selection = {"best_step": best["step"], "stopped_early": stopped_early, "evaluations": len(evals),
                     **{f"heldout_{k}_origin": evals[0][k] for k in ("c@5", "t@5", "top@5")},
                     **{f"heldout_{k}_best": best[k] for k in ("c@5", "t@5", "top@5")},
                     "heldout_headroom_closed_best": best["score"],
                     "heldout_items": geo.items.height}

    # Save the adapter (adapter_model.safetensors + adapter_config.json) and provenance.
    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    atomic_write_text(adapter_dir / "gdpo.json", json.dumps(
        {"base_identity": encoder.identity, "config": asdict(cfg), "steps": step,
         "selection": selection, "evals": evals,
         # peft's safetensors carry no checksum: record one so a damaged adapter is refused.
         "adapter_sha256": hash_files([adapter_dir / "adapter_model.safetensors"])}, indent=1))

    metrics = {"steps": step, "steps_this_run": step - start_step, "pairs": n,
               "train_seconds": train_seconds,
               "seconds_per_1k_pairs": 1000 * train_seconds / max((step - start_step) * cfg.batch_size, 1),
               **selection,
               **_final_losses(history), **_reward_margins(encoder, model, reward_model, pos, neg,
                                                             ref_emb, ref_idx, cfg)}
    metrics["seconds"] = time.perf_counter() - t_start
    return GDPOResult(history=history, metrics=metrics, adapter_path=adapter_dir, evals=evals)


def _final_losses(history: list[dict], window: int = 10) -> dict:
    if not history:
        return {}
    tail = history[-window:]
    return {f"final_{k}": float(np.mean([h[k] for h in tail])) for k in ("align", "sim", "total")} | {
        f"first_{k}": float(np.mean([h[k] for h in history[:window]])) for k in ("align", "sim", "total")}


def _reward_margins(encoder, model, reward_model, pos, neg, ref_emb, ref_idx, cfg) -> dict:
    """Mean R(i+) - R(i-) and pair accuracy under policy and reference, on up to eval_pairs pairs."""
    g = np.random.default_rng(cfg.seed)
    sel = g.choice(len(pos), size=min(cfg.eval_pairs, len(pos)), replace=False)
    texts = [pos[i] for i in sel] + [neg[i] for i in sel]
    model.eval()
    pol = torch.from_numpy(encoder.encode(texts, model=model, max_length=cfg.max_length)).to(ref_emb.device)
    ref = ref_emb[[ref_idx[t] for t in texts]]
    m = len(sel)
    with torch.no_grad():
        rp, rr = reward_model(pol), reward_model(ref)
    dp, dr = rp[:m] - rp[m:], rr[:m] - rr[m:]
    return {"policy_margin": float(dp.mean()), "reference_margin": float(dr.mean()),
            "policy_pair_acc": float((dp > 0).double().mean()),
            "reference_pair_acc": float((dr > 0).double().mean()),
            "eval_pairs": m}


# -- aligned encoder ------------------------------------------------------------------------------
def load_aligned_encoder(base_config: EncoderConfig, adapter_dir: Path | str) -> TextEncoder:
    """A TextEncoder whose model is the base with the G-DPO adapter merged in.

    Its ``version`` includes a hash of the adapter files, so aligned embeddings are versioned.
    """
    from peft import PeftModel
    from transformers import AutoModel

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} is not a LoRA adapter directory (adapter_model.safetensors "
                         "and adapter_config.json expected)")
    base_path = base_config.resolved_model_path()
    info_path = adapter_dir / "gdpo.json"
    if info_path.is_file():
        info = load_json(info_path, "G-DPO adapter info")
        want = info.get("base_identity", {}).get("weights_sha256")
        have = hash_files(model_files(base_path))
        if want is not None and want != have:
            raise ValueError(f"adapter {adapter_dir} was trained on a different base model than {base_path}")
        recorded = info.get("adapter_sha256")
        if recorded is not None and recorded != hash_files([weights]):
            raise ValueError(f"adapter {weights} fails its sha256 check (the file is corrupted); delete "
                             f"{adapter_dir} and re-materialize aligned_encoder")
    base = AutoModel.from_pretrained(str(base_path), local_files_only=True, use_safetensors=True)
    try:
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except Exception as exc:  # safetensors / shape errors from a damaged adapter
        raise ValueError(f"could not load the adapter in {adapter_dir}: {exc}") from exc
    adapter_hash = hash_files([weights, adapter_dir / "adapter_config.json"])
    return TextEncoder(base_config, model=merged, extra_identity={"adapter_sha256": adapter_hash})


def plot_losses(history: list[dict], path: Path | str) -> Path:
    """Plot align / sim / total losses per step (matplotlib Agg) to ``path``."""
    return _plot_steps(history, {k: f"L_{k}" for k in ("align", "sim", "total")}, path,
                       "G-DPO losses (Eq. 6-8)", ylabel="loss")


def _plot_steps(rows: list[dict], series: dict[str, str], path: Path | str, title: str, *,
                ylabel: str | None = None, marker: str | None = None,
                vline: tuple[int, str] | None = None) -> Path:
    """One line per ``series`` key (label = its value) against ``row["step"]`` (matplotlib Agg)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for key, label in series.items():
        ax.plot(steps, [r[key] for r in rows], marker=marker, label=label)
    if vline is not None:
        ax.axvline(vline[0], color="grey", linestyle="--", label=vline[1])
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save(fig, path, dpi=110)
