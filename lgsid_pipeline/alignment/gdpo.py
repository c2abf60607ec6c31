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
from lgsid_pipeline.alignment.encoder import TextEncoder, hash_files
from lgsid_pipeline.alignment.gdpo_policy import (
    LORA_TARGETS,
    GeographyEval,
    adapter_state,
    geography_score,
    headroom_closed,
    load_aligned_encoder,
    lora_policy,
    reference_cache,
    select_step,
)
from lgsid_pipeline.progress import advance
from lgsid_pipeline.alignment.preference_pairs import PAIR_SCHEMA, build_preference_pairs, pair_texts
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE, PromptTemplate
from lgsid_pipeline.alignment.reward import RewardModel
from lgsid_pipeline.train_state import (
    atomic_save_tensors,
    atomic_write_text,
    load_checkpoint,
    load_tensors,
    restore_optimizer,
    save_checkpoint,
)

__all__ = ["LORA_TARGETS", "PAIR_SCHEMA", "SIM_READINGS", "GDPOConfig", "GDPOResult",
           "build_preference_pairs", "gdpo_align_loss", "gdpo_loss", "geography_score",
           "headroom_closed", "load_aligned_encoder", "pair_texts", "plot_geography", "plot_losses",
           "select_step", "similarity_loss", "train_gdpo"]

log = logging.getLogger(__name__)


# -- losses ---------------------------------------------------------------------------------------
def gdpo_align_loss(r_pi_pos: torch.Tensor, r_pi_neg: torch.Tensor, r_ref_pos: torch.Tensor,
                    r_ref_neg: torch.Tensor, beta: float) -> torch.Tensor:
    # Eq. 6: L_align = -E log sigma(beta (R(E_pi(i+)) - R(E_pi(i-)) - R(E_ref(i+)) + R(E_ref(i-))))
    return -F.logsigmoid(beta * (r_pi_pos - r_pi_neg - r_ref_pos + r_ref_neg)).mean()


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


def _frozen_reward(reward_model: RewardModel, device) -> RewardModel:
    """R on ``device`` in eval mode with its weights frozen (G-DPO only differentiates through it)."""
    reward_model = reward_model.to(device).eval()
    for p in reward_model.parameters():
        p.requires_grad_(False)
    return reward_model


class _GDPORun:
    """One :func:`train_gdpo` call: the policy, its optimizer, the step reached, the loss history,
    the held-out evaluations and the best adapter state so far."""

    def __init__(self, encoder: TextEncoder, reward_model: RewardModel, items: pl.DataFrame, pairs: pl.DataFrame,
                 cfg: GDPOConfig, ckpt: Path | None, reference_embeddings: dict[str, np.ndarray] | None,
                 template: PromptTemplate) -> None:
        self.encoder, self.cfg, self.ckpt = encoder, cfg, ckpt
        self.pos, self.neg, self.anc = pair_texts(items, pairs, template)
        self.n = len(self.pos)
        self.model = lora_policy(encoder, cfg)
        # Everything a step touches lives on the encoder's device (cuda when available); R scores
        # float32 embeddings whatever the encoder's dtype.
        self.reward_model = _frozen_reward(reward_model, encoder.device)
        ref_emb, self.ref_idx = reference_cache(encoder, self.model,
                                                self.pos + self.neg + (self.anc if cfg.lam > 0 else []),
                                                reference_embeddings, cfg.max_length)
        self.ref_emb = ref_emb.to(encoder.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.steps_per_epoch = -(-self.n // cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        texts_key = hashlib.sha256("\x1e".join(self.pos + self.neg).encode()).hexdigest()[:16]
        self.signature = {"n_pairs": self.n, "texts": texts_key, "encoder": encoder.version, **asdict(cfg)}
        self.signature.pop("max_steps"), self.signature.pop("epochs"), self.signature.pop("checkpoint_every")
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.step = 0
        self.geo = GeographyEval(encoder, self.model, items, pairs, template, cfg) if cfg.eval_every > 0 else None
        self.best_state = adapter_state(self.model)  # step 0: LoRA B = 0, i.e. the unchanged encoder
        self.stopped_early = False

    def resume(self) -> None:
        """Continue from the checkpoint, if any; a run that stopped early stays stopped. Then
        evaluate step 0 when held-out selection is on and nothing was evaluated yet."""
        from peft import set_peft_model_state_dict

        cfg, ckpt = self.cfg, self.ckpt
        if ckpt is not None and (state := load_checkpoint(ckpt)) is not None:
            model_t, opt_t, meta = state
            if meta.get("signature") != self.signature:
                raise ValueError(f"G-DPO checkpoint in {ckpt} was written for different inputs/settings")
            set_peft_model_state_dict(self.model, model_t)
            restore_optimizer(self.opt, opt_t, meta["optimizer"])
            self.step, self.history = int(meta["step"]), list(meta["history"])
            self.evals = list(meta.get("evals", []))
            if self.geo is not None and self.evals and select_step(self.evals, cfg.max_top_loss)["step"] > 0:
                self.best_state = load_tensors(ckpt / "best_adapter.safetensors", "G-DPO best adapter")
            log.info("resuming G-DPO from step %d", self.step)
        evals = self.evals
        self.stopped_early = bool(evals) and self.step < self.total_steps and bool(
            sum(1 for e in evals if e["step"] > select_step(evals, cfg.max_top_loss)["step"]) >= cfg.patience)
        if self.stopped_early:  # a run that stopped early stays stopped when it is called again
            self.total_steps = self.step
        if self.geo is not None and not evals:
            evals.append(self.geo(0, None))

    def evaluate(self) -> bool:
        """Evaluate at ``step``; keep the state if it is the new best. True = stop (patience)."""
        self.evals.append(self.geo(self.step, self.evals[0]))
        best = select_step(self.evals, self.cfg.max_top_loss)
        if best["step"] == self.step:
            self.best_state = adapter_state(self.model)
            if self.ckpt is not None:
                self.ckpt.mkdir(parents=True, exist_ok=True)
                atomic_save_tensors(self.best_state, self.ckpt / "best_adapter.safetensors")
        since = sum(1 for e in self.evals if e["step"] > best["step"])
        return since >= self.cfg.patience

    def train_step(self) -> dict:
        """One optimizer step of Eq. 8 on the step's batch of pairs; returns its history record."""
        cfg = self.cfg
        epoch, b = divmod(self.step, self.steps_per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size].tolist()
        torch.manual_seed(cfg.seed * 7_919 + self.step)  # LoRA dropout, reproducible across resumes
        texts = ([self.pos[i] for i in idx] + [self.neg[i] for i in idx]
                 + ([self.anc[i] for i in idx] if cfg.lam > 0 else []))
        emb = self.encoder.embed_batch(texts, model=self.model, max_length=cfg.max_length).float()
        ref = self.ref_emb[[self.ref_idx[t] for t in texts]]
        m = len(idx)
        r_pi, r_ref = self.reward_model(emb[: 2 * m]), self.reward_model(ref[: 2 * m])
        align = gdpo_align_loss(r_pi[:m], r_pi[m:], r_ref[:m], r_ref[m:], cfg.beta)
        sim = similarity_loss(emb[2 * m:], ref[2 * m:], cfg.sim_reading) if cfg.lam > 0 else torch.zeros(())
        total = gdpo_loss(align, sim, cfg.lam)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.step += 1
        rec = {"step": self.step, "epoch": epoch + 1, "align": float(align.detach()), "sim": float(sim.detach()),
               "total": float(total.detach()),
               "margin": float((r_pi[:m] - r_pi[m:] - r_ref[:m] + r_ref[m:]).detach().mean())}
        self.history.append(rec)
        return rec

    def after_step(self, rec: dict, progress: Callable[[dict], None] | None) -> bool:
        """Report the step, evaluate and checkpoint when due; True = stop early (patience)."""
        cfg, step, total_steps = self.cfg, self.step, self.total_steps
        if progress is not None:
            progress({**rec, "total_steps": total_steps})
        advance("G-DPO", step, total_steps, unit="step", align=rec["align"], sim=rec["sim"])
        if step % 10 == 0:
            log.info("G-DPO step %d/%d align=%.4f sim=%.4f", step, total_steps, rec["align"], rec["sim"])
        stop = False
        if self.geo is not None and (step % cfg.eval_every == 0 or step == total_steps):
            stop = self.evaluate()
        if self.ckpt is not None and (step % cfg.checkpoint_every == 0 or step == total_steps or stop):
            save_checkpoint(self.ckpt, adapter_state(self.model), self.opt,
                            {"step": step, "history": self.history, "signature": self.signature,
                             "evals": self.evals})
        if stop:
            self.stopped_early = step < total_steps
            log.info("G-DPO stops at step %d: %d evaluations without a better held-out geography",
                     step, cfg.patience)
        return stop

    def keep_best(self) -> dict:
        """Load the selected step's adapter into the policy; the selection's summary ({} without
        held-out selection)."""
        from peft import set_peft_model_state_dict

        if self.geo is None:
            return {}
        evals = self.evals
        best = select_step(evals, self.cfg.max_top_loss)
        set_peft_model_state_dict(self.model, self.best_state)  # keep the selected step's adapter
        return {"best_step": best["step"], "stopped_early": self.stopped_early, "evaluations": len(evals),
                **{f"heldout_{k}_origin": evals[0][k] for k in ("c@5", "t@5", "top@5")},
                **{f"heldout_{k}_best": best[k] for k in ("c@5", "t@5", "top@5")},
                "heldout_headroom_closed_best": best["score"],
                "heldout_items": self.geo.items.height}

    def save_adapter(self, adapter_dir: Path, selection: dict) -> None:
        """Save the adapter (adapter_model.safetensors + adapter_config.json) and provenance."""
        self.model.save_pretrained(str(adapter_dir), safe_serialization=True)
        atomic_write_text(adapter_dir / "gdpo.json", json.dumps(
            {"base_identity": self.encoder.identity, "config": asdict(self.cfg), "steps": self.step,
             "selection": selection, "evals": self.evals,
             # peft's safetensors carry no checksum: record one so a damaged adapter is refused.
             "adapter_sha256": hash_files([adapter_dir / "adapter_model.safetensors"])}, indent=1))


def _adapter_dir(checkpoint_dir: Path | str | None, adapter_dir: Path | str | None) -> tuple[Path | None, Path]:
    """(checkpoint dir, adapter dir): the adapter goes to ``checkpoint_dir / "adapter"`` by default."""
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if adapter_dir is None:
        if ckpt is None:
            raise ValueError("give checkpoint_dir or adapter_dir so the adapter can be saved")
        adapter_dir = ckpt / "adapter"
    return ckpt, Path(adapter_dir)


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
    cfg = config or GDPOConfig()
    if pairs.height == 0:
        raise ValueError("pairs is empty: no preference pairs to train on")
    if reward_model.d != encoder.dim:
        raise ValueError(f"reward model expects dim {reward_model.d}, encoder gives {encoder.dim}")
    ckpt, adapter_dir = _adapter_dir(checkpoint_dir, adapter_dir)
    t_start = time.perf_counter()
    run = _GDPORun(encoder, reward_model, items, pairs, cfg, ckpt, reference_embeddings, template)
    run.resume()

    t_train = time.perf_counter()
    start_step = run.step
    while run.step < run.total_steps:
        if run.after_step(run.train_step(), progress):
            break
    train_seconds = time.perf_counter() - t_train
    selection = run.keep_best()
    run.save_adapter(adapter_dir, selection)

    step = run.step
    metrics = {"steps": step, "steps_this_run": step - start_step, "pairs": run.n,
               "train_seconds": train_seconds,
               "seconds_per_1k_pairs": 1000 * train_seconds / max((step - start_step) * cfg.batch_size, 1),
               **selection,
               **_final_losses(run.history), **_reward_margins(encoder, run.model, run.reward_model, run.pos,
                                                                 run.neg, run.ref_emb, run.ref_idx, cfg)}
    metrics["seconds"] = time.perf_counter() - t_start
    return GDPOResult(history=run.history, metrics=metrics, adapter_path=adapter_dir, evals=run.evals)



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


# -- plots ----------------------------------------------------------------------------------------
def plot_geography(evals: list[dict], best_step: int, path: Path | str) -> Path:
    """C@5, T@5 and Top@5 of the held-out items against the G-DPO step; the kept step marked."""
    return _plot_steps(evals, {k: k for k in ("c@5", "t@5", "top@5")}, path, "G-DPO held-out geography",
                       marker="o", vline=(best_step, f"kept (step {best_step})"))


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
