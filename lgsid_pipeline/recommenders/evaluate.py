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

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from ..progress import advance
from .data import SplitData, item_attribute, next_item_split
from .dien import DIENConfig, train_and_evaluate_dien
from .din import DINConfig, train_and_evaluate_din
from .heuristics import HEURISTICS, run_heuristic
from .metrics import per_user_hit_ndcg, target_ranks
from .reachability import reachable_share
from .report import (DIN_METRICS, DISC_MODELS, ORIGIN, TIGER_METRICS, EvaluationResult, din_city_rows,
                     evaluation_result, per_city_rows, plot_results)
from .strata import target_reachability
from .tiger import GenResult, TigerConfig, Tokens, rank_stage, topk_frame, train_and_evaluate_tiger

__all__ = ["DEFAULT_JOBS", "DIN_METRICS", "DISC_MODELS", "ORIGIN", "TIGER_METRICS", "EvaluationResult",
           "EvaluationSettings", "evaluate_all", "plot_results", "user_topk"]

# Worker processes for the runs: two fill the 2-core machine the demo is sized for (two one-thread
# TIGER runs finish more steps per second than one two-thread run); more where there are more cores.
DEFAULT_JOBS = min(2, os.cpu_count() or 1)



@dataclass
class EvaluationSettings:
    """What :func:`evaluate_all` runs and reports; each field is also a keyword of that function.

    ``ours`` names the method whose IMP is reported (default: ``"hgit"`` when present).
    ``disc_models`` names the discriminative models (of ``DISC_MODELS``) run when ``run_din``;
    DIEN takes ``dien_config``, by default ``din_config``'s settings with DIEN's ``aux_weight``.
    ``jobs`` > 1 trains the runs in that many worker processes (see the module docstring).
    """

    methods: list[str] | None = None  # SID methods of the SID frame to run (None: every one)
    seeds: tuple[int, ...] = (0, 1, 2)
    tiger_config: TigerConfig | None = None
    din_config: DINConfig | None = None
    dien_config: DIENConfig | None = None
    disc_models: tuple[str, ...] = ("DIN",)
    reach_km: float = 3.0
    reach_last_n: int = 5
    per_city: bool = True
    ours: str | None = None
    heuristics: tuple[str, ...] = HEURISTICS
    run_tiger: bool = True
    run_din: bool = True
    split_kwargs: dict | None = None  # keywords of next_item_split
    log: Callable[[dict], None] | None = None  # called with each epoch's and each run's record
    jobs: int = 1


def _item_city(split: SplitData, items: pl.DataFrame) -> np.ndarray | None:
    for col in ("city_key", "city"):
        if col in items.columns:
            return item_attribute(split, items, col)
    return None


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



@dataclass
class _Scope:
    """What every run of one evaluation shares: the split, the methods with their SID frames,
    and the geography (item coordinates, the city of each user's test target)."""

    split: SplitData
    methods: list[str]
    sids: dict[str, pl.DataFrame]
    ours: str | None
    lat: np.ndarray | None
    lon: np.ndarray | None
    city_of_target: np.ndarray | None
    user_city: dict[str, str]


def _checked(s: EvaluationSettings) -> EvaluationSettings:
    """``s`` validated, with ``disc_models`` a tuple of distinct known models."""
    if not s.seeds:
        raise ValueError("seeds must not be empty")
    disc_models = tuple(dict.fromkeys((s.disc_models,) if isinstance(s.disc_models, str) else s.disc_models))
    unknown = [m for m in disc_models if m not in DISC_MODELS]
    if unknown:
        raise ValueError(f"unknown disc_models {unknown}; choose from {list(DISC_MODELS)}")
    return replace(s, disc_models=disc_models)


def _scope(interactions: pl.DataFrame, items: pl.DataFrame, sid_frame: pl.DataFrame | None,
           s: EvaluationSettings) -> _Scope:
    """Build the split and check the requested methods against the SID frame."""
    split = next_item_split(interactions, known_items=items["item_id"], **(s.split_kwargs or {}))
    all_methods: list[str] = []
    if sid_frame is not None and sid_frame.height:
        for col in ("item_id", "method", "sid"):
            if col not in sid_frame.columns:
                raise ValueError(f"SID frame lacks column {col!r}")
        all_methods = sorted(sid_frame["method"].unique().to_list())
    methods = list(s.methods) if s.methods is not None else all_methods
    missing = set(methods) - set(all_methods)
    if missing:
        raise ValueError(f"methods {sorted(missing)} are not in the SID frame (has {all_methods})")
    ours = "hgit" if s.ours is None and "hgit" in methods else s.ours
    has_geo = "lat" in items.columns and "lon" in items.columns
    city = _item_city(split, items) if s.per_city else None
    city_of_target = city[split.test_target] if city is not None else None
    return _Scope(
        split=split,
        methods=methods,
        sids={m: sid_frame.filter(pl.col("method") == m) for m in methods},
        ours=ours,
        lat=item_attribute(split, items, "lat") if has_geo else None,
        lon=item_attribute(split, items, "lon") if has_geo else None,
        city_of_target=city_of_target,
        user_city=dict(zip(split.user_ids, map(str, city_of_target))) if city_of_target is not None else {},
    )


class _Tally:
    """The rows one evaluation collects: every number of every run, the reachability shares,
    the per-city scores, the per-user test scores and the first TIGER result of each method."""

    def __init__(self, scope: _Scope, s: EvaluationSettings) -> None:
        self.scope, self.settings = scope, s
        self.rows: dict[str, list[dict]] = {"runs": [], "reach": [], "city": []}
        self.user_runs: dict[tuple[str, str], list[np.ndarray]] = {}  # per run: [hit@10, ndcg@10] per user
        self.tiger_results: dict[str, GenResult] = {}
        self.test_hist = scope.split.history("test")

    def record(self, model: str, variant: str, seed: int, metrics: dict, seconds: float) -> None:
        """One run's metrics and CPU seconds as ``runs`` rows."""
        for k, v in metrics.items():
            self.rows["runs"].append({"model": model, "variant": variant, "seed": seed, "metric": k, "value": float(v)})
        self.rows["runs"].append({"model": model, "variant": variant, "seed": seed, "metric": "cpu_seconds",
                                  "value": float(seconds)})

    def ranked(self, model: str, variant: str, seed: int, topk_test: np.ndarray) -> None:
        """Reachability, per-user and per-city rows of one run's test top-K lists."""
        scope, s = self.scope, self.settings
        if scope.lat is not None:
            share = reachable_share(topk_test, self.test_hist, scope.lat, scope.lon, km=s.reach_km,
                                    last_n=s.reach_last_n)
            self.rows["reach"].append({"model": model, "variant": variant, "seed": seed, "share": share})
        hit, ndcg = per_user_hit_ndcg(target_ranks(topk_test, scope.split.test_target), 10)
        self.user_runs.setdefault((model, variant), []).append(np.stack([hit, ndcg]))
        if scope.city_of_target is not None:
            self.rows["city"] += per_city_rows(model, variant, seed, hit, ndcg, scope.city_of_target)

    def heuristics(self) -> None:
        """The targets' own reachability (the reference) and every peer heuristic."""
        scope, s = self.scope, self.settings
        if scope.lat is not None:  # the reference: how local the real test targets are
            share = target_reachability(scope.split, scope.lat, scope.lon, km=s.reach_km, last_n=s.reach_last_n)
            self.rows["reach"].append({"model": "targets", "variant": "test_target", "seed": s.seeds[0], "share": share})
        for h in s.heuristics:
            if h == "geo_nearest" and scope.lat is None:
                continue
            r = run_heuristic(h, scope.split, item_lat=scope.lat, item_lon=scope.lon)
            for seed in s.seeds:  # deterministic: the same numbers pair with every seed
                self.record("heuristic", h, seed, r.metrics, r.seconds)
            self.ranked("heuristic", h, s.seeds[0], r.topk["test"])
            if s.log:
                s.log({"model": "heuristic", "variant": h, **r.metrics})

    def model_runs(self) -> None:
        """Every TIGER method and discriminative variant over the seeds (seed by seed, TIGER first)."""
        scope, s = self.scope, self.settings
        tiger_config = s.tiger_config or TigerConfig()
        din_config = s.din_config or DINConfig()
        disc_config = {"DIN": din_config, "DIEN": s.dien_config or DIENConfig.from_din(din_config)}
        runner = _Runs(s.jobs, scope.split, scope.sids, s.log)
        for seed in s.seeds:
            if s.run_tiger:
                for m in scope.methods:
                    runner.add("TIGER", m, seed, tiger_config)
            for model in s.disc_models if s.run_din else ():
                for variant in [ORIGIN, *scope.methods]:
                    runner.add(model, variant, seed, disc_config[model])
        n_runs = len(runner.queue)
        with runner:
            for i, (model, variant, seed, _) in enumerate(runner.queue):
                res = runner.result(i)
                if model == "TIGER":
                    self.record("TIGER", variant, seed, res.metrics, res.cpu_seconds)
                    self.ranked("TIGER", variant, seed, res.topk_idx["test"])
                    self.tiger_results.setdefault(variant, res)
                else:
                    self.record(model, variant, seed, {**res.metrics, "test_samples": res.test_scores.height},
                                res.cpu_seconds)
                    if scope.user_city:
                        self.rows["city"] += din_city_rows(variant, seed, res, scope.user_city, model)
                if s.log:
                    s.log({"model": model, "variant": variant, "seed": seed, **res.metrics})
                advance("evaluation runs", i + 1, n_runs, unit="run")


def evaluate_all(interactions: pl.DataFrame, items: pl.DataFrame, sid_frame: pl.DataFrame | None, *,
                 settings: EvaluationSettings | None = None, **options) -> EvaluationResult:
    """Train and score every variant on one split and the same seeds; see the module docstring.

    The options are the fields of :class:`EvaluationSettings`, passed as ``settings``, as
    keywords of the same names, or both (keywords override ``settings``).
    """
    s = _checked(replace(settings or EvaluationSettings(), **options))
    scope = _scope(interactions, items, sid_frame, s)
    tally = _Tally(scope, s)
    tally.heuristics()
    tally.model_runs()
    return evaluation_result(scope.split, tally.rows, tally.user_runs, tally.tiger_results, scope.ours,
                             s.reach_km, s.reach_last_n)


def _with_seed(cfg, seed):
    return replace(cfg, seed=seed)


def user_topk(result: GenResult, split: SplitData, *, stage: str = "serve", k: int = 10) -> pl.DataFrame:
    """Pre-cached top-K per user from constrained beam search (serving cache).

    ``stage="serve"`` reads each user's whole history (train + valid + test) and recommends the
    next visit, masking the last item. Returns ``user_id, rank (1-based), item_id, sid, score``
    (score = summed log-probability of the SID).
    """
    if result.model is None or result.codec is None:
        raise ValueError("the TIGER result carries no trained model")
    cfg = result.model.cfg
    if cfg.beams < k + 1:
        raise ValueError(f"k={k} needs beams >= {k + 1}; the model was configured with {cfg.beams}")
    tk = Tokens(result.codec, cfg, split)
    items, scores = rank_stage(result.model, tk, split, stage, cfg, k)
    return topk_frame(split, items, scores, codec=result.codec)
