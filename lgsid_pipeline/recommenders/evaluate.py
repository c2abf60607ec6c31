"""One split, every variant: the recommender evaluation behind the paper's Tables 1, 2 and 5.

``evaluate_all`` builds the README next-item split once, then trains and scores on it

* TIGER with every tokenizer method of the SID table (Table 2 shape: Hit/NDCG@5/10 with IMP of
  the named method over the best other method),
* DIN with every method's SIDs and the ID-only "Origin" (Table 1 shape: AUC / GAUC with the
  gain over Origin), and optionally DIEN (``disc_models``) on the same variants, seeds, samples
  and impressions, its gain taken over DIEN's own Origin,
* the peer heuristics (popularity, last-item transitions, geo-nearest),

over the same seeds, and adds seed statistics (Table 5 shape: mean ± SD, t-based 95% CI,
median (IQR), Wilcoxon signed-rank against the best baseline), the reachability of top-K
lists, and a per-city breakdown (users grouped by the city of their test target).

The runs (variant x seed x model) are independent. ``jobs > 1`` trains them in that many
worker processes (spawned, so no thread pool of the parent is forked), each with one torch
thread; results are gathered in the sequential order, so every table is the same as with
``jobs=1`` and configs pinned to one torch thread (``threads=1``; with torch's default
threads, float reductions may differ in the last bits). A time cap (``TigerConfig.max_seconds``) then buys fewer steps per
run, so parallel runs should use a step budget (``max_steps``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from ..plotting import pyplot, save
from ..progress import advance
from .data import SplitData, item_attribute, next_item_split
from .dien import DIENConfig, train_and_evaluate_dien
from .din import DINConfig, train_and_evaluate_din
from .heuristics import HEURISTICS, run_heuristic
from .metrics import per_user_hit_ndcg, target_ranks
from .reachability import reachable_share
from .stats import paired_over_users, summarize, wilcoxon_paired
from .strata import target_reachability
from .tiger import GenResult, TigerConfig, rank_stage, topk_frame, train_and_evaluate_tiger

TIGER_METRICS = ("test_hit@5", "test_hit@10", "test_ndcg@5", "test_ndcg@10")
DIN_METRICS = ("auc", "gauc")
ORIGIN = "Origin"
DISC_MODELS = ("DIN", "DIEN")  # discriminative models (AUC / GAUC, Table 1), in table order
# Worker processes for the runs: two fill the 2-core machine the demo is sized for (two one-thread
# TIGER runs finish more steps per second than one two-thread run); more where there are more cores.
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


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


def _item_city(split: SplitData, items: pl.DataFrame) -> np.ndarray | None:
    for col in ("city_key", "city"):
        if col in items.columns:
            return item_attribute(split, items, col)
    return None


def _per_city_rows(model, variant, seed, hit, ndcg, city_of_target) -> list[dict]:
    """Per-city Hit@10 / NDCG@10 rows from the per-user test scores ``hit`` and ``ndcg``."""
    df = pl.DataFrame({"city": [str(c) for c in city_of_target], "hit@10": hit, "ndcg@10": ndcg})
    agg = df.group_by("city").agg(pl.len().alias("users"), pl.col("hit@10").mean(), pl.col("ndcg@10").mean())
    out = []
    for r in agg.iter_rows(named=True):
        for m in ("hit@10", "ndcg@10"):
            out.append({"model": model, "variant": variant, "seed": seed, "city": r["city"], "users": r["users"], "metric": m, "value": r[m]})
    return out


def _din_city_rows(variant, seed, res, user_city: dict[str, str], model: str = "DIN") -> list[dict]:
    from .metrics import auc

    df = res.test_scores.with_columns(pl.col("user_id").replace_strict(user_city, default=None).alias("city"))
    out = []
    for (city,), g in df.group_by("city"):
        lab = g["label"].to_numpy()
        if 0 < lab.sum() < lab.size:
            out.append({"model": model, "variant": variant, "seed": seed, "city": str(city),
                        "users": g["user_id"].n_unique(), "metric": "auc", "value": auc(lab, g["score"].to_numpy())})
    return out


def _tagged(log, model: str, variant: str, seed: int):
    """``log`` with each record prefixed by its run's model, variant and seed (None when ``log`` is)."""
    if log is None:
        return None
    return lambda rec: log({"model": model, "variant": variant, "seed": seed, **rec})


_TRAIN = {"DIN": train_and_evaluate_din, "DIEN": train_and_evaluate_dien}
_WORKER: dict = {}  # the split and SID frames, sent once to each worker process


def _init_worker(split: SplitData, sids: dict[str, pl.DataFrame]) -> None:
    from ..progress import ENV

    os.environ.pop(ENV, None)  # one terminal: the parent's bar counts finished runs, workers draw none
    _WORKER.update(split=split, sids=sids)


def _run_job(model: str, variant: str, cfg, split: SplitData | None = None, sids: dict | None = None, log=None):
    """One run: TIGER on ``variant``'s SIDs, or a discriminative ``model`` (``variant`` may be
    Origin, the ID-only model). In a worker the split and SIDs come from :func:`_init_worker`."""
    in_worker = split is None
    split = _WORKER["split"] if in_worker else split
    sids = _WORKER["sids"] if in_worker else sids
    if model == "TIGER":
        res = train_and_evaluate_tiger(split, sids[variant], cfg, log=log)
        if in_worker:
            res.model = res.model.cpu()  # a CUDA tensor would come back through IPC tied to the worker
        return res
    return _TRAIN[model](split, None if variant == ORIGIN else sids[variant], cfg)


class _Runs:
    """Runs jobs in order: inline (``jobs=1``) or on a pool of ``jobs`` spawned workers with one
    torch thread each; ``result(i)`` returns job ``i``'s result either way."""

    def __init__(self, jobs: int, split: SplitData, sids: dict[str, pl.DataFrame], log) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs, self.split, self.sids, self.log = jobs, split, sids, log
        self.queue: list[tuple[str, str, int, object]] = []
        self.pool: ProcessPoolExecutor | None = None
        self.futures: list[Future] = []

    def add(self, model: str, variant: str, seed: int, cfg) -> None:
        self.queue.append((model, variant, seed, _with_seed(cfg, seed)))

    def __enter__(self) -> "_Runs":
        if self.jobs > 1 and len(self.queue) > 1:
            self.pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(self.queue)),
                                            mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(self.split, self.sids))
            self.futures = [self.pool.submit(_run_job, m, v, replace(cfg, threads=1))
                            for m, v, _, cfg in self.queue]
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def result(self, i: int):
        if self.pool is not None:
            res, self.futures[i] = self.futures[i].result(), None  # the caller keeps what it needs
            return res
        model, variant, seed, cfg = self.queue[i]
        log = _tagged(self.log, model, variant, seed) if model == "TIGER" else None
        return _run_job(model, variant, cfg, self.split, self.sids, log)


def evaluate_all(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    sid_frame: pl.DataFrame | None,
    *,
    methods: list[str] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    tiger_config: TigerConfig | None = None,
    din_config: DINConfig | None = None,
    dien_config: DIENConfig | None = None,
    disc_models: tuple[str, ...] = ("DIN",),
    reach_km: float = 3.0,
    reach_last_n: int = 5,
    per_city: bool = True,
    ours: str | None = None,
    heuristics: tuple[str, ...] = HEURISTICS,
    run_tiger: bool = True,
    run_din: bool = True,
    split_kwargs: dict | None = None,
    log=None,
    jobs: int = 1,
) -> EvaluationResult:
    """Train and score every variant on one split and the same seeds; see the module docstring.

    ``ours`` names the method whose IMP is reported (default: ``"hgit"`` when present).
    ``disc_models`` names the discriminative models (of ``DISC_MODELS``) run when ``run_din``;
    DIEN takes ``dien_config``, by default ``din_config``'s settings with DIEN's ``aux_weight``.
    ``jobs`` > 1 trains the runs in that many worker processes (see the module docstring).
    """
    if not seeds:
        raise ValueError("seeds must not be empty")
    disc_models = tuple(dict.fromkeys((disc_models,) if isinstance(disc_models, str) else disc_models))
    unknown = [m for m in disc_models if m not in DISC_MODELS]
    if unknown:
        raise ValueError(f"unknown disc_models {unknown}; choose from {list(DISC_MODELS)}")
    tiger_config = tiger_config or TigerConfig()
    din_config = din_config or DINConfig()
    disc_config = {"DIN": din_config, "DIEN": dien_config or DIENConfig.from_din(din_config)}
    split = next_item_split(interactions, known_items=items["item_id"], **(split_kwargs or {}))
    all_methods: list[str] = []
    if sid_frame is not None and sid_frame.height:
        for col in ("item_id", "method", "sid"):
            if col not in sid_frame.columns:
                raise ValueError(f"SID frame lacks column {col!r}")
        all_methods = sorted(sid_frame["method"].unique().to_list())
    methods = list(methods) if methods is not None else all_methods
    missing = set(methods) - set(all_methods)
    if missing:
        raise ValueError(f"methods {sorted(missing)} are not in the SID frame (has {all_methods})")
    if ours is None and "hgit" in methods:
        ours = "hgit"
    sids = {m: sid_frame.filter(pl.col("method") == m) for m in methods}

    has_geo = "lat" in items.columns and "lon" in items.columns
    lat = item_attribute(split, items, "lat") if has_geo else None
    lon = item_attribute(split, items, "lon") if has_geo else None
    city = _item_city(split, items) if per_city else None
    city_of_target = city[split.test_target] if city is not None else None
    user_city = dict(zip(split.user_ids, map(str, city_of_target))) if city_of_target is not None else {}
    test_hist = split.history("test")

    runs: list[dict] = []
    reach_rows: list[dict] = []
    city_rows: list[dict] = []
    tiger_results: dict[str, GenResult] = {}
    user_runs: dict[tuple[str, str], list[np.ndarray]] = {}  # (model, variant) -> per run: [hit@10, ndcg@10] per user

    def per_user(model, variant, topk_test):
        """Per-user test Hit@10 / NDCG@10 of one run, kept for the over-users comparison."""
        hit, ndcg = per_user_hit_ndcg(target_ranks(topk_test, split.test_target), 10)
        user_runs.setdefault((model, variant), []).append(np.stack([hit, ndcg]))
        return hit, ndcg

    def record(model, variant, seed, metrics, seconds):
        for k, v in metrics.items():
            runs.append({"model": model, "variant": variant, "seed": seed, "metric": k, "value": float(v)})
        runs.append({"model": model, "variant": variant, "seed": seed, "metric": "cpu_seconds", "value": float(seconds)})

    def reach(model, variant, seed, topk):
        if lat is None:
            return
        share = reachable_share(topk, test_hist, lat, lon, km=reach_km, last_n=reach_last_n)
        reach_rows.append({"model": model, "variant": variant, "seed": seed, "share": share})

    if lat is not None:  # the reference: how local the real test targets are
        share = target_reachability(split, lat, lon, km=reach_km, last_n=reach_last_n)
        reach_rows.append({"model": "targets", "variant": "test_target", "seed": seeds[0], "share": share})
    for h in heuristics:
        if h == "geo_nearest" and lat is None:
            continue
        r = run_heuristic(h, split, item_lat=lat, item_lon=lon)
        for seed in seeds:  # deterministic: the same numbers pair with every seed
            record("heuristic", h, seed, r.metrics, r.seconds)
        reach("heuristic", h, seeds[0], r.topk["test"])
        hit, ndcg = per_user("heuristic", h, r.topk["test"])
        if city_of_target is not None:
            city_rows += _per_city_rows("heuristic", h, seeds[0], hit, ndcg, city_of_target)
        if log:
            log({"model": "heuristic", "variant": h, **r.metrics})

    runner = _Runs(jobs, split, sids, log)
    for seed in seeds:
        if run_tiger:
            for m in methods:
                runner.add("TIGER", m, seed, tiger_config)
        for model in disc_models if run_din else ():
            for variant in [ORIGIN, *methods]:
                runner.add(model, variant, seed, disc_config[model])
    n_runs = len(runner.queue)
    with runner:
        for i, (model, variant, seed, _) in enumerate(runner.queue):
            res = runner.result(i)
            if model == "TIGER":
                record("TIGER", variant, seed, res.metrics, res.cpu_seconds)
                reach("TIGER", variant, seed, res.topk_idx["test"])
                hit, ndcg = per_user("TIGER", variant, res.topk_idx["test"])
                if city_of_target is not None:
                    city_rows += _per_city_rows("TIGER", variant, seed, hit, ndcg, city_of_target)
                if variant not in tiger_results:
                    tiger_results[variant] = res
                if log:
                    log({"model": "TIGER", "variant": variant, "seed": seed, **res.metrics})
            else:
                metrics = {**res.metrics, "test_samples": res.test_scores.height}
                record(model, variant, seed, metrics, res.cpu_seconds)
                if user_city:
                    city_rows += _din_city_rows(variant, seed, res, user_city, model)
                if log:
                    log({"model": model, "variant": variant, "seed": seed, **res.metrics})
            advance("evaluation runs", i + 1, n_runs, unit="run")

    runs_df = pl.DataFrame(runs, schema={"model": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "metric": pl.Utf8, "value": pl.Float64})
    table1 = _table1(runs_df)
    table2, imp = _table2(runs_df, ours)
    seed_stats = _seed_stats(runs_df, ours)
    reach_df = (
        pl.DataFrame(reach_rows, schema={"model": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "share": pl.Float64})
        .group_by("model", "variant", maintain_order=True)
        .agg(pl.col("share").mean())
        .with_columns(pl.lit(reach_km).alias("km"), pl.lit(reach_last_n).alias("last_n"))
        .select("model", "variant", "km", "last_n", "share")
    )
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
    user_means = {k: np.mean(v, axis=0) for k, v in user_runs.items()}
    return EvaluationResult(
        user_paired=_user_paired(user_means, ours),
        user_scores=_user_scores(user_means, {k: len(v) for k, v in user_runs.items()}, split.user_ids),
        runs=runs_df,
        table1=table1,
        table2=table2,
        imp=imp,
        seed_stats=seed_stats,
        reachability=reach_df,
        per_city=city_df,
        split_meta=split.metadata(),
        ours=ours,
        tiger_results=tiger_results,
        split=split,
    )


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


def _with_seed(cfg, seed):
    return replace(cfg, seed=seed)


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


def user_topk(result: GenResult, split: SplitData, *, stage: str = "serve", k: int = 10) -> pl.DataFrame:
    """Pre-cached top-K per user from constrained beam search (serving cache).

    ``stage="serve"`` reads each user's whole history (train + valid + test) and recommends the
    next visit, masking the last item. Returns ``user_id, rank (1-based), item_id, sid, score``
    (score = summed log-probability of the SID).
    """
    if result.model is None or result.codec is None:
        raise ValueError("the TIGER result carries no trained model")
    from .tiger import _Tokens

    cfg = result.model.cfg
    if cfg.beams < k + 1:
        raise ValueError(f"k={k} needs beams >= {k + 1}; the model was configured with {cfg.beams}")
    tk = _Tokens(result.codec, cfg, split)
    items, scores = rank_stage(result.model, tk, split, stage, cfg, k)
    return topk_frame(split, items, scores, codec=result.codec)
