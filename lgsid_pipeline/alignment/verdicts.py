"""The alignment checks' verdicts: does the reward model prefer geography on the G-DPO pairs,
and did the aligned embeddings gain geography over origin without losing too much semantics?
Pure functions over a materialization's numeric metadata."""

from __future__ import annotations

MAX_TOP5_LOSS = 0.05  # relative top@5 semantic similarity the aligned space may lose (paper: -2.5%)


def reward_signal_verdict(meta: dict[str, float]) -> tuple[bool, dict[str, float]]:
    """G-DPO (Eq. 6) only widens the margin the reward model already draws between the preferred
    (near / co-visited) and the dispreferred (far) location: if R does not prefer the near one on
    the *reference* embeddings, training amplifies whatever else R rewards, not geography."""
    ref_acc, pol_acc = meta.get("reference_pair_acc"), meta.get("policy_pair_acc")
    if ref_acc is None or pol_acc is None:
        raise ValueError("aligned_encoder metadata lacks reference_pair_acc / policy_pair_acc")
    return ref_acc > 0.5, {"reference_pair_acc": ref_acc, "policy_pair_acc": pol_acc}


def geography_gain_verdict(meta: dict[str, float], max_top5_loss: float = MAX_TOP5_LOSS
                           ) -> tuple[bool, dict[str, float]]:
    """Aligned vs origin (alignment_report overall): C@5 and T@5 must not fall, and top@5
    semantic similarity may lose at most ``max_top5_loss`` relative (the paper: -2.5%)."""
    need = [f"{v}.{k}" for v in ("origin", "aligned") for k in ("top@5", "c@5", "t@5")]
    if any(k not in meta for k in need):
        raise ValueError(f"alignment_report metadata lacks {[k for k in need if k not in meta]}")
    rel = {k: meta[f"aligned.{k}"] / max(meta[f"origin.{k}"], 1e-12) - 1.0 for k in ("top@5", "c@5", "t@5")}
    passed = rel["c@5"] >= 0 and rel["t@5"] >= 0 and rel["top@5"] >= -max_top5_loss
    return passed, {f"relative_change.{k}": v for k, v in rel.items()}
