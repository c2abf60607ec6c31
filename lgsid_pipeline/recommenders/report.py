"""The evaluation's tables and figures: Table 1 (DIN / DIEN AUC, GAUC), Table 2 (TIGER and
heuristics, IMP), Table 5 (seed statistics), the over-users comparison, reachability and
per-city frames, their markdown rendering and the bar charts.

:func:`evaluation_result` turns the rows one evaluation collected into an
:class:`EvaluationResult`; nothing here trains or scores a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..plotting import pyplot, save
from .data import SplitData
from .metrics import auc
from .stats import paired_over_users, summarize, wilcoxon_paired
from .tiger import GenResult

TIGER_METRICS = ("test_hit@5", "test_hit@10", "test_ndcg@5", "test_ndcg@10")
DIN_METRICS = ("auc", "gauc")
ORIGIN = "Origin"
DISC_MODELS = ("DIN", "DIEN")  # discriminative models (AUC / GAUC, Table 1), in table order


@dataclass
class EvaluationResult:
    """Every table as a polars frame; ``markdown()`` renders them."""

    runs: pl.DataFrame  # model, variant, seed, metric, value (every measured number; DIN / DIEN also
    # record test_samples, the number of scored test impressions, identical across variants and models)
    table1: pl.DataFrame  # DIN / DIEN: model, variant, auc, gauc, delta_auc, delta_gauc (means over seeds;
    # delta against the same model's Origin)
    table2: pl.DataFrame  # TIGER + heuristics: variant, kind, hit@5, hit@10, ndcg@5, ndcg@10 (test)
    imp: dict[str, float]  # IMP of ``ours`` over the best other TIGER method, per metric
    seed_stats: pl.DataFrame  # model, variant, metric, n, mean, sd, ci_low, ci_high, median, iqr, baseline, p, ...
    reachability: pl.DataFrame  # model, variant, km, last_n, share (mean over seeds)
    per_city: pl.DataFrame  # model, variant, city, users, metric, value
    split_meta: dict
    ours: str | None
    tiger_results: dict[str, GenResult] = field(default_factory=dict, repr=False)  # first seed per method
    split: SplitData | None = field(default=None, repr=False)
    # ``ours`` vs every other TIGER method and heuristic over the test users (per-user Hit@10 /
    # NDCG@10 averaged over seeds): model, variant, baseline, metric, users, means, diff, CI, p
    user_paired: pl.DataFrame = field(default_factory=pl.DataFrame)
    # the per-user test scores behind it, so any other test can be run from the artefacts:
    # user_id, model, variant, runs (seeds averaged), hit@10, ndcg@10
    user_scores: pl.DataFrame = field(default_factory=pl.DataFrame)

    def markdown(self) -> str:
        parts = [
            "### Split\n\n" + _md(pl.DataFrame({"key": list(self.split_meta), "value": [str(v) for v in self.split_meta.values()]})),
            f"### Discriminative ({self._disc_names()}): AUC / GAUC, gain over the same model's Origin "
            "(Table 1 shape)\n\n" + _md(self.table1),
            "### Generative (TIGER) and heuristics, test split (Table 2 shape)\n\n" + _md(self.table2),
        ]
        if self.imp:
            parts.append(
                f"IMP of `{self.ours}` over the best other method: "
                + ", ".join(f"{k} {v:+.2%}" for k, v in self.imp.items())
            )
        parts += [
            "### Seed statistics (Table 5 shape)\n\n" + _md(self.seed_stats),
            "### Reachability of top-K lists\n\n" + _md(self.reachability),
        ]
        if self.user_paired.height:
            parts.insert(-1, f"### `{self.ours}` against each other method over test users (per-user metric "
                         "averaged over seeds; paired bootstrap 95% CI and sign-flip permutation p of the mean "
                         "difference; Wilcoxon signed-rank p for reference)\n\n"
                         + _md(self.user_paired))
        if self.per_city.height:
            wide = self.per_city.pivot(on="metric", index=["model", "variant", "city", "users"], values="value")
            parts.append("### Per city (users grouped by the city of their test target)\n\n" + _md(wide))
        return "\n\n".join(parts) + "\n"

    def _disc_names(self) -> str:
        if self.table1.height and "model" in self.table1.columns:
            return ", ".join(self.table1["model"].unique(maintain_order=True).to_list())
        return "DIN"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}"
    return str(v)


def _md(df: pl.DataFrame) -> str:
    if df.height == 0:
        return "(none)"
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, sep, *rows])


def per_city_rows(model, variant, seed, hit, ndcg, city_of_target) -> list[dict]:
    """Per-city Hit@10 / NDCG@10 rows from the per-user test scores ``hit`` and ``ndcg``."""
    df = pl.DataFrame({"city": [str(c) for c in city_of_target], "hit@10": hit, "ndcg@10": ndcg})
    agg = df.group_by("city").agg(pl.len().alias("users"), pl.col("hit@10").mean(), pl.col("ndcg@10").mean())
    out = []
    for r in agg.iter_rows(named=True):
        for m in ("hit@10", "ndcg@10"):
            out.append({"model": model, "variant": variant, "seed": seed, "city": r["city"], "users": r["users"], "metric": m, "value": r[m]})
    return out


def din_city_rows(variant, seed, res, user_city: dict[str, str], model: str = "DIN") -> list[dict]:
    """Per-city test AUC rows of one discriminative run (cities whose impressions hold both labels)."""
    df = res.test_scores.with_columns(pl.col("user_id").replace_strict(user_city, default=None).alias("city"))
    out = []
    for (city,), g in df.group_by("city"):
        lab = g["label"].to_numpy()
        if 0 < lab.sum() < lab.size:
            out.append({"model": model, "variant": variant, "seed": seed, "city": str(city),
                        "users": g["user_id"].n_unique(), "metric": "auc", "value": auc(lab, g["score"].to_numpy())})
    return out


def evaluation_result(split: SplitData, rows: dict[str, list], user_runs: dict[tuple[str, str], list[np.ndarray]],
                      tiger_results: dict[str, GenResult], ours: str | None, reach_km: float,
                      reach_last_n: int) -> EvaluationResult:
    """Every table from the collected ``rows`` (``runs``, ``reach`` and ``city`` record lists)
    and the per-run per-user test scores ``user_runs`` ((model, variant) -> [hit@10, ndcg@10] per run)."""
    runs_df = pl.DataFrame(rows["runs"], schema={"model": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64,
                                                 "metric": pl.Utf8, "value": pl.Float64})
    table2, imp = _table2(runs_df, ours)
    user_means = {k: np.mean(v, axis=0) for k, v in user_runs.items()}
    return EvaluationResult(
        user_paired=_user_paired(user_means, ours),
        user_scores=_user_scores(user_means, {k: len(v) for k, v in user_runs.items()}, split.user_ids),
        runs=runs_df,
        table1=_table1(runs_df),
        table2=table2,
        imp=imp,
        seed_stats=_seed_stats(runs_df, ours),
        reachability=_reach_frame(rows["reach"], reach_km, reach_last_n),
        per_city=_city_frame(rows["city"]),
        split_meta=split.metadata(),
        ours=ours,
        tiger_results=tiger_results,
        split=split,
    )


def _reach_frame(reach_rows: list[dict], km: float, last_n: int) -> pl.DataFrame:
    """Mean top-K reachability share over seeds per (model, variant)."""
    return (
        pl.DataFrame(reach_rows, schema={"model": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "share": pl.Float64})
        .group_by("model", "variant", maintain_order=True)
        .agg(pl.col("share").mean())
        .with_columns(pl.lit(km).alias("km"), pl.lit(last_n).alias("last_n"))
        .select("model", "variant", "km", "last_n", "share")
    )


def _city_frame(city_rows: list[dict]) -> pl.DataFrame:
    """Per-city metrics averaged over seeds, sorted by model, variant, city and metric."""
    city_df = pl.DataFrame(
        city_rows,
        schema={"model": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "city": pl.Utf8, "users": pl.Int64, "metric": pl.Utf8, "value": pl.Float64},
    )
    if city_df.height:
        city_df = (
            city_df.group_by("model", "variant", "city", "metric", maintain_order=True)
            .agg(pl.col("users").first(), pl.col("value").mean())
            .select("model", "variant", "city", "users", "metric", "value")
            .sort("model", "variant", "city", "metric")
        )
    return city_df


def _user_paired(user_means: dict[tuple[str, str], np.ndarray], ours: str | None) -> pl.DataFrame:
    """``ours`` (TIGER) against every other TIGER method and every heuristic, over the test users."""
    schema = {"model": pl.Utf8, "variant": pl.Utf8, "baseline_model": pl.Utf8, "baseline": pl.Utf8, "metric": pl.Utf8,
              "users": pl.Int64, "mean_variant": pl.Float64, "mean_baseline": pl.Float64, "mean_diff": pl.Float64,
              "rel_diff": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "differing_users": pl.Int64,
              "p": pl.Float64, "significant": pl.Boolean, "wilcoxon_p": pl.Float64}
    mine = user_means.get(("TIGER", ours)) if ours is not None else None
    rows = []
    if mine is not None:
        for (model, variant), theirs in user_means.items():
            if (model, variant) == ("TIGER", ours):
                continue
            for i, metric in enumerate(("test_hit@10", "test_ndcg@10")):
                rows.append({"model": "TIGER", "variant": ours, "baseline_model": model, "baseline": variant,
                             "metric": metric, **paired_over_users(mine[i], theirs[i])})
    return pl.DataFrame(rows, schema=schema)


def _user_scores(user_means: dict[tuple[str, str], np.ndarray], user_runs: dict[tuple[str, str], int],
                 user_ids) -> pl.DataFrame:
    schema = {"user_id": pl.Utf8, "model": pl.Utf8, "variant": pl.Utf8, "runs": pl.Int64,
              "hit@10": pl.Float64, "ndcg@10": pl.Float64}
    frames = [pl.DataFrame({"user_id": [str(u) for u in user_ids], "model": model, "variant": variant,
                            "runs": user_runs[(model, variant)], "hit@10": v[0], "ndcg@10": v[1]}, schema=schema)
              for (model, variant), v in user_means.items()]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)



def _means(runs: pl.DataFrame, model: str, metrics) -> pl.DataFrame:
    sub = runs.filter((pl.col("model") == model) & pl.col("metric").is_in(list(metrics)))
    if sub.height == 0:
        return pl.DataFrame()
    return sub.group_by("variant", "metric", maintain_order=True).agg(pl.col("value").mean()).pivot(
        on="metric", index="variant", values="value"
    )


def _table1(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (discriminative model, variant); deltas against the same model's Origin."""
    frames = []
    for model in DISC_MODELS:
        t = _means(runs, model, DIN_METRICS)
        if t.height == 0:
            continue
        base = t.filter(pl.col("variant") == ORIGIN)
        if base.height:
            t = t.with_columns(
                (pl.col("auc") - base["auc"][0]).alias("delta_auc"),
                (pl.col("gauc") - base["gauc"][0]).alias("delta_gauc"),
            )
        frames.append(t.select(pl.lit(model).alias("model"), pl.all()))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal")


def _table2(runs: pl.DataFrame, ours: str | None) -> tuple[pl.DataFrame, dict[str, float]]:
    frames = []
    for model, kind in (("TIGER", "TIGER"), ("heuristic", "heuristic")):
        t = _means(runs, model, TIGER_METRICS)
        if t.height:
            frames.append(t.with_columns(pl.lit(kind).alias("kind")))
    if not frames:
        return pl.DataFrame(), {}
    t = pl.concat(frames, how="diagonal").rename({m: m.replace("test_", "") for m in TIGER_METRICS})
    t = t.select("variant", "kind", *[m.replace("test_", "") for m in TIGER_METRICS])
    imp: dict[str, float] = {}
    tig = t.filter(pl.col("kind") == "TIGER")
    if ours is not None and ours in tig["variant"].to_list() and tig.height > 1:
        mine = tig.filter(pl.col("variant") == ours)
        others = tig.filter(pl.col("variant") != ours)
        for m in ("hit@5", "hit@10", "ndcg@5", "ndcg@10"):
            best = float(others[m].max())
            imp[m] = float(mine[m][0]) / best - 1.0 if best > 0 else float("nan")
    return t, imp


def _seed_stats(runs: pl.DataFrame, ours: str | None) -> pl.DataFrame:
    """Per (model, variant, metric): Table 5 statistics plus Wilcoxon vs the best baseline.

    Baseline: for DIN and DIEN, the same model's Origin; for TIGER, the best TIGER method other
    than the variant itself (by mean), or the best heuristic when there is only one method.
    """
    rows = []
    per_model = [*((m, DIN_METRICS) for m in DISC_MODELS), ("TIGER", ("test_ndcg@10", "test_hit@10"))]
    for model, metrics in per_model:
        sub = runs.filter(pl.col("model") == model)
        for metric in metrics:
            m = sub.filter(pl.col("metric") == metric)
            if m.height == 0:
                continue
            means = m.group_by("variant").agg(pl.col("value").mean()).sort("value", descending=True)
            for variant in m["variant"].unique(maintain_order=True).to_list():
                vals = m.filter(pl.col("variant") == variant).sort("seed")
                s = summarize(vals["value"].to_list())
                if model in DISC_MODELS:
                    base = ORIGIN if variant != ORIGIN else None
                    base_rows = m.filter(pl.col("variant") == ORIGIN)
                else:
                    cands = [v for v in means["variant"].to_list() if v != variant]
                    base_model = "TIGER"
                    if not cands:
                        h = runs.filter((pl.col("model") == "heuristic") & (pl.col("metric") == metric))
                        hm = h.group_by("variant").agg(pl.col("value").mean()).sort("value", descending=True)
                        cands, base_model = hm["variant"].to_list(), "heuristic"
                    base = cands[0] if cands else None
                    base_rows = runs.filter(
                        (pl.col("model") == base_model) & (pl.col("variant") == base) & (pl.col("metric") == metric)
                    )
                w = {"p": float("nan"), "min_p": float("nan"), "can_reach_significance": False, "significant": False}
                if base is not None and base_rows.height:
                    paired = vals.join(base_rows.select("seed", pl.col("value").alias("b")), on="seed")
                    if paired.height:
                        w = wilcoxon_paired(paired["value"].to_list(), paired["b"].to_list())
                rows.append({"model": model, "variant": variant, "metric": metric, **s, "baseline": base,
                             "wilcoxon_p": w["p"], "min_p": w["min_p"],
                             "can_reach_significance": w["can_reach_significance"], "significant": w["significant"]})
    schema = {"model": pl.Utf8, "variant": pl.Utf8, "metric": pl.Utf8, "n": pl.Int64, "mean": pl.Float64, "sd": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "median": pl.Float64, "iqr": pl.Float64, "baseline": pl.Utf8,
              "wilcoxon_p": pl.Float64, "min_p": pl.Float64, "can_reach_significance": pl.Boolean, "significant": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def plot_results(result: EvaluationResult, path: str | Path) -> Path:
    """Bar charts with 95% CI whiskers: TIGER test NDCG@10 (+ heuristics) and DIN (+ DIEN, bars
    side by side per variant) AUC."""
    plt = pyplot()

    fig, (ax_gen, ax_disc) = plt.subplots(1, 2, figsize=(11, 4))

    st = result.seed_stats.filter((pl.col("model") == "TIGER") & (pl.col("metric") == "test_ndcg@10"))
    names = st["variant"].to_list()
    means = st["mean"].to_numpy() if st.height else np.array([])
    err = np.nan_to_num((st["ci_high"] - st["mean"]).to_numpy()) if st.height else np.array([])
    h = result.table2.filter(pl.col("kind") == "heuristic") if result.table2.height else result.table2
    if h.height:
        names += h["variant"].to_list()
        means = np.concatenate([means, h["ndcg@10"].to_numpy()])
        err = np.concatenate([err, np.zeros(h.height)])
    x = np.arange(len(names))
    ax_gen.bar(x, means, yerr=err, capsize=4, color=["C0" if i < st.height else "C7" for i in range(len(names))])
    ax_gen.set_xticks(x, names, rotation=30, ha="right")
    ax_gen.set_ylabel("NDCG@10 (test)")
    ax_gen.set_title("TIGER: mean over seeds, 95% CI")

    st = result.seed_stats.filter(pl.col("model").is_in(list(DISC_MODELS)) & (pl.col("metric") == "auc"))
    models = [m for m in DISC_MODELS if m in set(st["model"].to_list())] or ["DIN"]
    variants = st["variant"].unique(maintain_order=True).to_list()
    x = np.arange(len(variants))
    width = 0.8 / len(models)
    lo, hi = [], []
    for j, model in enumerate(models):
        sub = {r["variant"]: r for r in st.filter(pl.col("model") == model).iter_rows(named=True)}
        m = np.array([sub[v]["mean"] if v in sub else np.nan for v in variants], dtype=float)
        e = np.nan_to_num(np.array([sub[v]["ci_high"] - sub[v]["mean"] if v in sub else np.nan for v in variants],
                                   dtype=float))
        offset = (j - (len(models) - 1) / 2) * width
        ax_disc.bar(x + offset, m, width=width if len(models) > 1 else 0.8, yerr=e, capsize=4, color=f"C{j}",
                    label=model)
        if np.isfinite(m).any():
            lo.append(float(np.nanmin(m - e)))
            hi.append(float(np.nanmax(m + e)))
    ax_disc.set_xticks(x, variants, rotation=30, ha="right")
    ax_disc.set_ylabel("AUC (test)")
    ax_disc.set_title(f"{' / '.join(models)}: mean over seeds, 95% CI")
    if len(models) > 1:
        ax_disc.legend(fontsize=8)
    if lo:
        ax_disc.set_ylim(max(0.0, min(lo) - 0.02), min(1.0, max(hi) + 0.02))
    return save(fig, path, dpi=120)

