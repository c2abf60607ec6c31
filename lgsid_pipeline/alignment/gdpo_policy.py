"""G-DPO's policy and its state: the LoRA policy over the base encoder, the reference embeddings
(the same model with its adapters disabled), the adapter's weights, the held-out geography that
picks the adapter kept (:class:`~lgsid_pipeline.alignment.gdpo.GDPOConfig`'s selection rule) and
loading a saved adapter back as an aligned encoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from lgsid_pipeline import paper
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, hash_files, model_files
from lgsid_pipeline.alignment.prompts import PromptTemplate, build_prompts
from lgsid_pipeline.train_state import load_json

if TYPE_CHECKING:
    from lgsid_pipeline.alignment.gdpo import GDPOConfig

LORA_TARGETS = paper.LORA_TARGETS  # the encoder modules LoRA adapts (BERT-style names)


def lora_policy(encoder: TextEncoder, cfg: GDPOConfig):
    """pi_theta: a copy of the encoder's model with LoRA adapters on ``LORA_TARGETS`` (seeded)."""
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


def reference_cache(
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


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A detached copy of the policy's LoRA adapter weights."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


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


class GeographyEval:
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
