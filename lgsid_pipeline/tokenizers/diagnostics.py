"""Tokenizer diagnostics: reconstruction, codebook usage, token coverage (paper Figure 4),
category purity by SID prefix (Figure 5), geographic purity, collisions.

Reconstruction error is measured in the input embedding space for every method
(``tokenizer.reconstruct``: the sum of centres for HGIT / Res-KMeans, the decoder output for
RQ-VAE): ``recon_mse`` = mean over items of ``|x - x_hat|^2``, ``recon_rel`` = that divided by the
total variance ``mean |x - mean(x)|^2`` (0 = perfect, 1 = no better than the mean vector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lgsid_pipeline.plotting import pyplot, save
from lgsid_pipeline.tokenizers.dedup import collision_rate, n_duplicates

COVERAGE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


def usage_stats(codes_level: np.ndarray, k: int) -> dict[str, Any]:
    """Used / dead codes, entropy (nats), perplexity exp(H) and items-per-token quantiles."""
    counts = np.bincount(np.asarray(codes_level, dtype=np.int64), minlength=k)
    used = counts[counts > 0]
    p = used / used.sum()
    entropy = float(-(p * np.log(p)).sum())
    q = np.quantile(used, COVERAGE_QUANTILES) if used.size else np.zeros(len(COVERAGE_QUANTILES))
    return {
        "codebook_size": int(k),
        "used": int(used.size),
        "dead": int(k - used.size),
        "usage_fraction": float(used.size / k),
        "entropy": entropy,
        "perplexity": float(np.exp(entropy)),
        "max_items_per_token": int(used.max()) if used.size else 0,
        "coverage": {f"q{int(round(qq * 100))}": float(v) for qq, v in zip(COVERAGE_QUANTILES, q)},
    }


def prefix_purity(codes_prefix: np.ndarray, labels: pl.Series | None) -> float | None:
    """Share of items (with a non-null label) whose label equals the majority label of their
    SID prefix group. None when the label column is absent or entirely null."""
    if labels is None or labels.null_count() == labels.len():
        return None
    df = pl.DataFrame({f"c{j}": codes_prefix[:, j].astype(np.int64) for j in range(codes_prefix.shape[1])})
    df = df.with_columns(labels.cast(pl.Utf8, strict=False).alias("label")).drop_nulls("label")
    if df.height == 0:
        return None
    keys = [c for c in df.columns if c != "label"]
    top = df.group_by([*keys, "label"]).len().group_by(keys).agg(pl.col("len").max())
    return float(top["len"].sum() / df.height)


def _column(items: pl.DataFrame | None, name: str) -> pl.Series | None:
    return items[name] if items is not None and name in items.columns else None


def tokenizer_diagnostics(
    tokenizer: Any,
    X: np.ndarray,
    items: pl.DataFrame | None,
    codes: np.ndarray,
    *,
    dedup_codes: np.ndarray | None = None,
) -> dict[str, Any]:
    """All diagnostics of one fitted tokenizer on ``X`` / ``items`` with raw ``codes``."""
    X = np.asarray(X, dtype=np.float32)
    codes = np.asarray(codes)
    if codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes has {codes.shape[0]} rows but X has {X.shape[0]}")
    if items is not None and items.height != X.shape[0]:
        raise ValueError(f"items has {items.height} rows but X has {X.shape[0]}")
    sizes = list(tokenizer.codebook_sizes_)
    sse, tv = 0.0, 0.0
    mean = X.mean(0, dtype=np.float64)
    for s in range(0, X.shape[0], 65_536):
        xb = X[s : s + 65_536].astype(np.float64)
        sse += float(((xb - tokenizer.reconstruct(codes[s : s + 65_536])) ** 2).sum())
        tv += float(((xb - mean) ** 2).sum())
    n = X.shape[0]
    out: dict[str, Any] = {
        "method": getattr(tokenizer, "method", type(tokenizer).__name__),
        "n_items": int(n),
        "levels": len(sizes),
        "codebook_sizes": sizes,
        "recon_mse": sse / n,
        "total_variance": tv / n,
        "recon_rel": (sse / tv) if tv > 0 else 0.0,
        "per_level": [usage_stats(codes[:, j], k) | {"level": j + 1} for j, k in enumerate(sizes)],
        "collision_rate_before": collision_rate(codes),
        "n_duplicates_before": n_duplicates(codes),
    }
    purity: dict[str, float | None] = {}
    for depth in range(1, min(2, codes.shape[1]) + 1):
        tag = "L1" if depth == 1 else "L1+2"
        for col in ("cat1", "cat2"):
            purity[f"{col}@{tag}"] = prefix_purity(codes[:, :depth], _column(items, col))
    out["category_purity"] = purity
    out["geo_purity"] = {
        f"{col}@L1": prefix_purity(codes[:, :1], _column(items, col)) for col in ("city", "town")
    }
    if dedup_codes is not None:
        out["collision_rate_after"] = collision_rate(dedup_codes)
        out["sid_width"] = int(np.asarray(dedup_codes).shape[1])
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def diagnostics_markdown(diags_by_method: dict[str, dict[str, Any]]) -> str:
    """Two markdown tables: one row per method (summary), one row per method and level."""
    lines = [
        "| method | items | codebooks | recon MSE | recon rel | collisions (raw) | cat1 purity L1 | cat1 purity L1+2 "
        "| cat2 purity L1+2 | city purity L1 | town purity L1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, d in diags_by_method.items():
        cp, gp = d["category_purity"], d["geo_purity"]
        lines.append(
            f"| {m} | {d['n_items']} | {'x'.join(map(str, d['codebook_sizes']))} | {_fmt(d['recon_mse'])} "
            f"| {_fmt(d['recon_rel'])} | {_fmt(d['collision_rate_before'])} | {_fmt(cp.get('cat1@L1'))} "
            f"| {_fmt(cp.get('cat1@L1+2'))} | {_fmt(cp.get('cat2@L1+2'))} | {_fmt(gp.get('city@L1'))} "
            f"| {_fmt(gp.get('town@L1'))} |"
        )
    lines += [
        "",
        "| method | level | K | used | dead | perplexity | entropy | items/token q50 | q75 | q90 | q95 | q99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, d in diags_by_method.items():
        for lv in d["per_level"]:
            c = lv["coverage"]
            lines.append(
                f"| {m} | {lv['level']} | {lv['codebook_size']} | {lv['used']} | {lv['dead']} | {_fmt(lv['perplexity'])} "
                f"| {_fmt(lv['entropy'])} | {_fmt(c['q50'])} | {_fmt(c['q75'])} | {_fmt(c['q90'])} | {_fmt(c['q95'])} "
                f"| {_fmt(c['q99'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_coverage(diags_by_method: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Figure-4 style: items-per-token quantiles (50-99%) per level, one bar group per method."""
    plt = pyplot()
    levels = max(d["levels"] for d in diags_by_method.values())
    fig, axes = plt.subplots(1, levels, figsize=(4.5 * levels, 3.6), squeeze=False)
    width = 0.8 / max(1, len(diags_by_method))
    xs = np.arange(len(COVERAGE_QUANTILES))
    for lv in range(levels):
        ax = axes[0, lv]
        for i, (m, d) in enumerate(diags_by_method.items()):
            if lv < d["levels"]:
                cov = d["per_level"][lv]["coverage"]
                ax.bar(xs + i * width, [cov[f"q{int(round(q * 100))}"] for q in COVERAGE_QUANTILES], width, label=m)
        ax.set_xticks(xs + width * (len(diags_by_method) - 1) / 2, [f"{int(q * 100)}%" for q in COVERAGE_QUANTILES])
        ax.set_title(f"Level {lv + 1}: items per token")
        ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    return save(fig, path, dpi=110)


def plot_codebook_usage(diags_by_method: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Per-level codebook usage fraction and perplexity / K, one bar group per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    methods = list(diags_by_method)
    width = 0.8 / max(1, len(methods))
    levels = max(d["levels"] for d in diags_by_method.values())
    xs = np.arange(levels)
    for i, m in enumerate(methods):
        per = diags_by_method[m]["per_level"]
        axes[0].bar(xs[: len(per)] + i * width, [p["usage_fraction"] for p in per], width, label=m)
        axes[1].bar(xs[: len(per)] + i * width, [p["perplexity"] / p["codebook_size"] for p in per], width, label=m)
    for ax, title in zip(axes, ("used codes / K", "perplexity / K")):
        ax.set_xticks(xs + width * (len(methods) - 1) / 2, [f"L{j + 1}" for j in range(levels)])
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    return save(fig, path, dpi=110)
