"""SID shootout: every tokenizer, TIGER and DIN, on the README split of one dataset.

Usage:
    .venv/bin/python -m benchmarks.sid_shootout --data ../shared/data/gowalla_nyc --out FILE.json
        [--seeds 0,1,2] [--tiger-steps N] [--methods M,M,...] [--aligned PARQUET]
        [--dedup-order item_id|spatial|popularity] [--local-km 5] [--din-epochs 3]
        [--cache DIR] [--encoder DIR] [--codebook-size K] [--threads 2] [--jobs 2]
        [--template paper|coordinates] [--instruction] [--paired-seeds] [--dry-run] [--hub-share 0.01]
        [--device cpu|cuda] [--origin-npy FILE.npy]

What it does, in order:

1. the README next-item split (``next_item_split``: 5-core, repeats collapsed, leave-one-out);
2. origin embeddings of the ranked items (the pipeline's prompt and encoder, cached on disk by
   the prompts' hash), and aligned ones from ``--aligned`` (a parquet of item_id, embedding,
   e.g. the ``aligned`` rows of a pipeline home's item_embeddings) when given;
3. one SID table per method, every codebook fitted on the items the evaluation ranks (not the
   whole file), with the same sizes, levels, seed and dedup for every method. A method is
   ``tokenizer[:embeddings][@order]``: ``hgit:origin`` (the paper's HGIT),
   ``hgit_geo_last:origin``, ``res_kmeans:origin``, ``rqvae:origin``, ``geo_prefix:origin``,
   ``gnpr_rqvae`` (RQ-VAE on GNPR-SID numeric features), ``random_id`` (control); ``:aligned``
   fits on the ``--aligned`` embeddings; ``@spatial`` / ``@popularity`` order the dedup digit
   (training visit counts only, so nothing of the validation or test targets leaks); ``+hubs``
   gives the ``--hub-share`` most visited items (training visits) ID-like codes of their own
   (``dedup.hub_codes``), e.g. ``hgit_geo_last:aligned+hubs``;
4. TIGER (the same config and step budget for every method) and DIN, for every seed, plus the
   peer heuristics; per user Hit@10 / NDCG@10 on validation and test (averaged over seeds);
5. per method: ``valid``, ``test``, ``test_no_airports`` (gowalla_nyc's LGA / JFK / EWR targets
   left out), the strata of the test targets, a local-life ranking mode (only items within
   ``--local-km`` of the user's last item are ranked; over the users whose target is among
   them), reachability of the top-10 and the targets' own reachability, collision figures;
6. ``best_baseline``: the baseline (not an HGIT variant, not the random control) with the best
   validation Hit@10; ``paired``: every method against it over users (mean difference, paired
   bootstrap 95% CI, sign-flip permutation p); ``default_method``: the method with the best
   validation Hit@10 (never chosen on test).

Writes the JSON to ``--out`` and a markdown table beside it (same stem, ``.md``). Each finished
(method, seed) run is saved at once under ``--runs`` (default: ``OUT.runs/``), keyed by its SIDs,
seed, configs and split, so a killed or extended shootout (more seeds, more methods) reruns only
what is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_recommenders import airport_items  # noqa: E402
from lgsid_pipeline.alignment.prompts import DEFAULT_TEMPLATE_NAME, TEMPLATE_LINES, build_prompts, prompt_template  # noqa: E402
from lgsid_pipeline.recommenders.data import SplitData, item_attribute, next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.din import DINConfig, train_and_evaluate_din  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import HEURISTICS, item_counts, run_heuristic  # noqa: E402
from lgsid_pipeline.recommenders.local import (eligible_users, local_candidates, local_metrics,  # noqa: E402
                                               local_nearest_topk, local_popularity_topk, tiger_local_topk)
from lgsid_pipeline.recommenders.metrics import per_user_hit_ndcg, target_ranks  # noqa: E402
from lgsid_pipeline.recommenders.reachability import reachable_share  # noqa: E402
from lgsid_pipeline.recommenders.stats import paired_over_users  # noqa: E402
from lgsid_pipeline.recommenders.strata import stratified_scores, target_reachability, target_strata  # noqa: E402
from lgsid_pipeline.recommenders.tiger import TigerConfig, Tokens, train_and_evaluate_tiger  # noqa: E402
from lgsid_pipeline.tokenizers import default_codebook_sizes, make_tokenizer  # noqa: E402
from lgsid_pipeline.tokenizers.dedup import (DEDUP_ORDERS, collision_figures, dedup_order_key,  # noqa: E402
                                              hub_codes, unique_sids)
from lgsid_pipeline.tokenizers.features import gnpr_features  # noqa: E402

DEFAULT_METHODS = ("hgit:origin", "hgit_geo_last:origin", "res_kmeans:origin", "rqvae:origin", "geo_prefix:origin",
                   "gnpr_rqvae", "random_id")
DEFAULT_HUB_SHARE = 0.01  # a '+hubs' method's share of the items, most visited first
LGSID_FAMILY = ("hgit", "hgit_geo_last")  # the paper's HGIT and its variants, on any embeddings
CONTROLS = ("random_id",)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    tokenizer: str
    embeddings: str  # origin | aligned | gnpr | none
    order: str
    hubs: bool = False  # the most visited items get ID-like codes of their own (dedup.hub_codes)

    @property
    def family(self) -> str:
        if self.tokenizer in LGSID_FAMILY:
            return "lgsid"
        return "control" if self.tokenizer in CONTROLS else "baseline"


def parse_method(spec: str, default_order: str) -> MethodSpec:
    """``tokenizer[:embeddings][@order][+hubs]`` -> MethodSpec (clear errors for unknown parts)."""
    core, plus, extra = spec.partition("+")
    if plus and extra != "hubs":
        raise ValueError(f"method {spec!r}: unknown modifier {'+' + extra!r}; the one modifier is '+hubs'")
    hubs = bool(plus)
    body, _, order = core.partition("@")
    tok, _, emb = body.partition(":")
    order = order or default_order
    if order not in DEDUP_ORDERS:
        raise ValueError(f"method {spec!r}: unknown dedup order {order!r}; choose from {DEDUP_ORDERS}")
    if tok == "gnpr_rqvae":
        return MethodSpec(spec, "rqvae", "gnpr", order, hubs)
    if tok == "random_id":
        return MethodSpec(spec, "random_id", "origin", order, hubs)
    if tok not in ("hgit", "hgit_geo_last", "res_kmeans", "rqvae", "geo_prefix"):
        raise ValueError(f"method {spec!r}: unknown tokenizer {tok!r}")
    emb = emb or "origin"
    if emb not in ("origin", "aligned"):
        raise ValueError(f"method {spec!r}: embeddings must be 'origin' or 'aligned', got {emb!r}")
    return MethodSpec(spec, tok, emb, order, hubs)


def load_dataset(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    for f in ("items.parquet", "interactions.parquet"):
        if not (data / f).is_file():
            raise SystemExit(f"error: {data} has no {f} (the shared dataset schema: items.parquet + interactions.parquet)")
    items = pl.read_parquet(data / "items.parquet").with_columns(pl.col("item_id").cast(pl.Utf8))
    inter = pl.read_parquet(data / "interactions.parquet").with_columns(pl.col("item_id").cast(pl.Utf8),
                                                                        pl.col("user_id").cast(pl.Utf8))
    return items, inter


def ranked_items(split: SplitData, items: pl.DataFrame) -> pl.DataFrame:
    """The items the evaluation ranks, in the split's vocabulary order."""
    vocab = pl.DataFrame({"item_id": split.item_ids})
    return vocab.join(items.unique("item_id", keep="first"), on="item_id", how="left", maintain_order="left")


def origin_embeddings(prompts: list[str], cache: Path, encoder: str | None, dtype: str = "float32") -> np.ndarray:
    """Origin embeddings of ``prompts``, cached by their text and the encoder's version.

    ``dtype`` defaults to the exact float32 path, the one the recorded tables were measured
    with; ``"auto"`` is the pipeline's default (bfloat16 inference where the CPU has it)."""
    from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder

    enc = TextEncoder(EncoderConfig(model_path=encoder, device="cpu", dtype=dtype))
    key = hashlib.sha1(("\x1e".join(prompts) + enc.version).encode()).hexdigest()[:16]
    path = cache / f"origin-{key}.npy"
    if path.is_file():
        return np.load(path)
    X = enc.encode(prompts)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp.npy")
    np.save(tmp, X)
    tmp.replace(path)
    return X


def precomputed_embeddings(path: Path, n_items: int) -> tuple[np.ndarray, str]:
    """Origin embeddings saved earlier (e.g. this command's own ``--cache`` file), one float row
    per ranked item in the split's order, for a machine without the encoder; no model is loaded.
    Returns them and the file's sha256 (first 16 hex digits), read from the same bytes."""
    raw = path.read_bytes()
    X = np.load(io.BytesIO(raw))
    if X.ndim != 2 or X.shape[0] != n_items or not np.issubdtype(X.dtype, np.floating):
        raise SystemExit(f"error: --origin-npy {path} holds {X.dtype} {X.shape}; "
                         f"expected a float (n_items={n_items}, dim) array")
    if not np.isfinite(X).all():
        raise SystemExit(f"error: --origin-npy {path} has non-finite values (row {int(np.argwhere(~np.isfinite(X))[0, 0])})")
    return X.astype(np.float32, copy=False), hashlib.sha256(raw).hexdigest()[:16]


def aligned_embeddings(path: Path, ranked: pl.DataFrame) -> np.ndarray:
    emb = pl.read_parquet(path).select(pl.col("item_id").cast(pl.Utf8), "embedding")
    joined = ranked.select("item_id").join(emb, on="item_id", how="left", maintain_order="left")
    missing = joined["embedding"].null_count()
    if missing:
        raise SystemExit(f"error: {missing} ranked items have no embedding in {path}")
    return np.asarray(joined["embedding"].to_list(), dtype=np.float32)


def build_sids(spec: MethodSpec, X: dict[str, np.ndarray], ranked: pl.DataFrame, sizes: list[int], levels: int,
               popularity: np.ndarray, seed: int, hub_share: float = DEFAULT_HUB_SHARE) -> tuple[np.ndarray, dict]:
    emb = X[spec.embeddings]
    params = {"min_steps": 1000} if spec.tokenizer == "rqvae" else {}
    tok = make_tokenizer(spec.tokenizer, codebook_sizes=list(sizes), levels=levels, seed=seed, **params)
    t0 = time.perf_counter()
    codes = tok.fit(emb, ranked).transform(emb, ranked)
    n_hubs = 0
    if spec.hubs:
        codes, hubs = hub_codes(codes, popularity, hub_share)
        n_hubs = int(hubs.size)
    key = dedup_order_key(ranked, spec.order, popularity)
    sids, _ = unique_sids(codes, "append", order_key=key)
    figures = collision_figures(codes, sids)
    figures["fit_seconds"] = time.perf_counter() - t0
    figures["codebook_sizes"] = list(tok.codebook_sizes_)
    if spec.hubs:
        figures["hubs"] = n_hubs
    return sids, figures


def _per_user(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    hit, ndcg = per_user_hit_ndcg(target_ranks(topk, targets), 10)
    return np.stack([hit, ndcg])


def _summary(arr: np.ndarray, mask: np.ndarray | None = None) -> dict:
    a = arr if mask is None else arr[:, mask]
    return {"hit@10": float(a[0].mean()) if a.shape[1] else float("nan"),
            "ndcg@10": float(a[1].mean()) if a.shape[1] else float("nan"), "users": int(a.shape[1])}


def _seed_ari(fits: dict[int, tuple[np.ndarray, dict]]) -> dict[str, list[float]]:
    """How much a reseed moves the SIDs: per tokenizer seed after the first, the adjusted Rand
    index of the items' SID prefixes (levels 1, 1-2, ..., all raw levels) against the first
    seed's. 1 means the same partition of the items."""
    from sklearn.metrics import adjusted_rand_score

    seeds = sorted(fits)
    ref = fits[seeds[0]][0]
    return {str(s): [float(adjusted_rand_score(prefix_labels(ref, d), prefix_labels(fits[s][0], d)))
                     for d in range(1, ref.shape[1])] for s in seeds[1:]}


def prefix_labels(sids: np.ndarray, depth: int) -> np.ndarray:
    """One label per item: the index of its SID prefix of ``depth`` levels among the distinct ones."""
    return np.unique(sids[:, :depth], axis=0, return_inverse=True)[1].reshape(-1)


_CTX: dict = {}


def _init_worker(ctx: dict) -> None:
    _CTX.clear()
    _CTX.update(ctx)
    torch.set_num_threads(ctx["threads"])


def _one_run(task: tuple) -> tuple[tuple[str, int], dict]:
    """TIGER (and DIN) for one method and seed: per-user arrays of every view, and the records."""
    name, sids, seed = task
    c = _CTX
    split = c["split"]
    sid_map = dict(zip(split.item_ids, sids.tolist()))
    cfg = replace(c["tiger_cfg"], seed=seed)
    res = train_and_evaluate_tiger(split, sid_map, cfg)
    loc, _ = tiger_local_topk(res.model, Tokens(res.codec, cfg, split), split, "test", cfg, c["cands"])
    lm = local_metrics(loc, split, "test", c["eligible"])
    out = {
        "method": name,
        "valid": _per_user(res.topk_idx["valid"], split.valid_target),
        "test": _per_user(res.topk_idx["test"], split.test_target),
        "local": np.stack([lm["hit@10_per_user"], lm["ndcg@10_per_user"]]),
        "reach": reachable_share(res.topk_idx["test"], split.history("test"), c["lat"], c["lon"]),
        "tiger": {"seed": seed, "best_epoch": res.best_epoch, "cpu_seconds": res.cpu_seconds, "seconds": res.seconds,
                  **{k: float(v) for k, v in res.metrics.items()}},
        "din": None,
    }
    if c["din_epochs"] > 0:
        d = train_and_evaluate_din(split, sid_map, replace(c["din_cfg"], seed=seed))
        out["din"] = {"seed": seed, "cpu_seconds": d.cpu_seconds, **{k: float(v) for k, v in d.metrics.items()}}
    return (name, seed), out


# TigerConfig fields added after runs were recorded, with the value that reproduces the code
# before them: a run with that value is keyed as before, so recorded runs stay reusable
# (bf16=False computes exactly what the code before the option computed).
_KEY_NEUTRAL = {"bf16": False}


def _run_key(name: str, sids: np.ndarray, seed: int, ctx: dict) -> str:
    """What one saved run depends on: the SIDs, the seed, the TIGER/DIN configs and the split."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(sids, dtype=np.int64).tobytes())
    tiger = sorted((k, v) for k, v in ctx["tiger_cfg"].__dict__.items() if _KEY_NEUTRAL.get(k, object()) != v)
    h.update(repr((name, seed, tiger, sorted(ctx["din_cfg"].__dict__.items()),
                   ctx["din_epochs"], ctx["local_km"], ctx["split"].metadata())).encode())
    return h.hexdigest()[:16]


def _save_run(runs: Path, key: str, r: dict) -> None:
    """One finished (method, seed) run, written atomically, so a killed shootout resumes without it."""
    runs.mkdir(parents=True, exist_ok=True)
    arrays = {k: r[k] for k in ("valid", "test", "local", "reach") if r[k] is not None}
    tmp = runs / f".{key}.{time.time_ns()}.tmp.npz"
    meta = {"method": r.get("method"), "tiger": r["tiger"], "din": r["din"]}
    np.savez(tmp, records=np.array(json.dumps(meta, default=float)), **arrays)
    tmp.replace(runs / f"{key}.npz")


def _load_run(runs: Path, key: str) -> dict | None:
    path = runs / f"{key}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        out = {k: z[k] for k in ("valid", "test", "local", "reach")}
        out.update(json.loads(str(z["records"])))
    out["reach"] = float(out["reach"])
    return out


def _run_all(tasks: list[tuple], ctx: dict, jobs: int):
    """Yield ``_one_run`` results; ``jobs > 1`` runs them in that many spawned processes, each
    with ``ctx["threads"]`` torch threads (on 2 cores two 1-thread runs finish more steps per
    second than one 2-thread run). Every run is seeded, so the results do not depend on jobs."""
    if jobs <= 1:
        _init_worker(ctx)
        for t in tasks:
            yield _one_run(t)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx,)) as pool:
        for f in as_completed([pool.submit(_one_run, t) for t in tasks]):
            yield f.result()


def _prepare(args: argparse.Namespace) -> dict:
    """The split, the items' embeddings per space, their coordinates, strata and local candidates."""
    items, inter = load_dataset(Path(args.data))
    split = next_item_split(inter, known_items=items["item_id"])
    ranked = ranked_items(split, items)
    template = prompt_template(args.template, args.instruction)
    prompts = build_prompts(ranked, template=template)
    specs = [parse_method(m, args.dedup_order) for m in args.methods]
    if args.origin_npy:
        origin, sha = precomputed_embeddings(Path(args.origin_npy), len(prompts))
        origin_source = f"{args.origin_npy} (sha256 {sha})"
    else:
        origin = origin_embeddings(prompts, Path(args.cache), args.encoder, args.encoder_dtype)
        origin_source = "encoded by this run (cached)"
    X = {"origin": origin}
    if any(s.embeddings == "aligned" for s in specs):
        if not args.aligned:
            raise SystemExit("error: a ':aligned' method needs --aligned PARQUET (item_id, embedding)")
        X["aligned"] = aligned_embeddings(Path(args.aligned), ranked)
    if any(s.embeddings == "gnpr" for s in specs):
        X["gnpr"] = gnpr_features(ranked, inter.filter(pl.col("item_id").is_in(split.item_ids)))
    sizes = [args.codebook_size] * args.levels if args.codebook_size else default_codebook_sizes(split.n_items, args.levels)
    lat = item_attribute(split, ranked, "lat").astype(np.float64)
    lon = item_attribute(split, ranked, "lon").astype(np.float64)
    airports = airport_items(split, ranked) if "name" in ranked.columns else np.array([], dtype=np.int64)
    cands = local_candidates(split, lat, lon, "test", km=args.local_km)
    return {"split": split, "ranked": ranked, "prompts": prompts, "specs": specs, "X": X, "sizes": sizes,
            "popularity": item_counts(split, "valid"),  # training visits only
            "origin_source": origin_source, "lat": lat, "lon": lon, "no_airport": ~np.isin(split.test_target, airports),
            "strata": target_strata(split, lat, lon, airports=airports), "cands": cands,
            "eligible": eligible_users(split, cands, "test")}


def _heuristics(d: dict, keep, out_methods: dict) -> None:
    """The heuristics' per-user scores (full catalogue and local), kept beside the tokenizers'."""
    split, lat, lon, cands, eligible = d["split"], d["lat"], d["lon"], d["cands"], d["eligible"]
    for h in HEURISTICS:
        r = run_heuristic(h, split, item_lat=lat, item_lon=lon)
        keep(h, "valid", _per_user(r.topk["valid"], split.valid_target))
        keep(h, "test", _per_user(r.topk["test"], split.test_target))
        out_methods[h] = {"family": "heuristic", "reachability": reachable_share(r.topk["test"], split.history("test"), lat, lon)}
    for name, topk in (("popularity", local_popularity_topk(split, cands, "test")),
                       ("geo_nearest", local_nearest_topk(split, cands, "test", lat, lon))):
        lm = local_metrics(topk, split, "test", eligible)
        keep(name, "local", np.stack([lm["hit@10_per_user"], lm["ndcg@10_per_user"]]))


def _plan(args: argparse.Namespace, d: dict, ctx: dict, runs: Path):
    """Fit every method's SIDs (per tokenizer seed) and sort its (method, seed) runs into the
    finished ones (reused from ``runs``) and the tasks still to train."""
    tasks, entries, keys, done = [], {}, {}, {}
    for spec in d["specs"]:
        fits: dict[int, tuple[np.ndarray, dict]] = {}
        for seed in args.seeds:
            # --paired-seeds: run seed s fits its own codebooks with seed codebook_seed + s, so the
            # spread over seeds includes the tokenizer's; otherwise one fit serves every seed
            t_seed = args.codebook_seed + (seed if args.paired_seeds else 0)
            if t_seed not in fits:
                fits[t_seed] = build_sids(spec, d["X"], d["ranked"], d["sizes"], args.levels, d["popularity"],
                                          t_seed, args.hub_share)
            sids = fits[t_seed][0]
            keys[(spec.name, seed)] = k = _run_key(spec.name, sids, seed, ctx)
            saved = _load_run(runs, k)
            if saved is not None:
                done[(spec.name, seed)] = saved
                print(f"{spec.name} seed {seed}: reusing the finished run {runs / (k + '.npz')}", flush=True)
            else:
                tasks.append((spec.name, sids, seed))
                print(f"{spec.name} seed {seed}: to run (key {k}, tokenizer seed {t_seed})", flush=True)
        figs = [f for _, f in fits.values()]
        entries[spec.name] = {"family": spec.family, "tokenizer": spec.tokenizer, "embeddings": spec.embeddings,
                              "dedup_order": spec.order, "collisions": figs[0], "tiger": [], "din": []}
        if len(figs) > 1:
            entries[spec.name]["collisions_per_tokenizer_seed"] = {str(s): f for s, (_, f) in fits.items()}
            entries[spec.name]["tokenizer_seed_ari"] = _seed_ari(fits)
    return tasks, entries, keys, done


def _summarise(args: argparse.Namespace, d: dict, means: dict, out_methods: dict) -> None:
    """Each method's validation / test / airport-free / local summaries and its strata."""
    for m, st in means.items():
        e = out_methods[m]
        e["valid"] = _summary(st["valid"])
        e["test"] = _summary(st["test"])
        e["test_no_airports"] = _summary(st["test"], d["no_airport"])
        if "local" in st:
            e["local"] = _summary(st["local"]) | {"km": args.local_km, "eligible_share": float(d["eligible"].mean())}
    strata_rows = stratified_scores({m: (st["test"][0], st["test"][1]) for m, st in means.items()}, d["strata"])
    for row in strata_rows:
        out_methods[row["method"]].setdefault("strata", {})[row["stratum"]] = {
            k: row[k] for k in row if k not in ("method", "stratum")}


def _paired_against(best_baseline: str, methods: list[str], means: dict, no_airport: np.ndarray,
                    out_methods: dict) -> None:
    """Paired over-users differences (and CIs) of every method against the best baseline."""
    for m in methods:
        if m == best_baseline:
            continue
        paired = {}
        for view, stage, mask in (("valid", "valid", None), ("test", "test", None),
                                  ("test_no_airports", "test", no_airport), ("local", "local", None)):
            if stage not in means[m] or stage not in means[best_baseline]:
                continue
            a, b = means[m][stage], means[best_baseline][stage]
            if mask is not None:
                a, b = a[:, mask], b[:, mask]
            if a.shape[1] == 0:
                continue
            paired[view] = {metric: paired_over_users(a[i], b[i], n_perm=2000)
                            for i, metric in enumerate(("hit@10", "ndcg@10"))}
        out_methods[m]["paired"] = paired


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    d = _prepare(args)
    split, specs, no_airport = d["split"], d["specs"], d["no_airport"]
    tiger_cfg = TigerConfig(epochs=1000, max_steps=args.tiger_steps, max_seconds=None, seed=0,
                            max_valid_users=args.max_valid_users, device=args.device)
    din_cfg = DINConfig(epochs=args.din_epochs, device=args.device)
    per_user: dict[str, dict[str, list[np.ndarray]]] = {}
    out_methods: dict[str, dict] = {}

    def keep(name, stage, arr):
        per_user.setdefault(name, {}).setdefault(stage, []).append(arr)

    _heuristics(d, keep, out_methods)
    ctx = {"split": split, "lat": d["lat"], "lon": d["lon"], "cands": d["cands"], "eligible": d["eligible"],
           "tiger_cfg": tiger_cfg, "din_cfg": din_cfg, "din_epochs": args.din_epochs, "local_km": args.local_km,
           "threads": max(1, args.threads // max(1, args.jobs))}
    runs = Path(args.runs) if args.runs else Path(args.out).with_suffix(".runs")
    tasks, entries, keys, done = _plan(args, d, ctx, runs)
    if args.dry_run:
        print(f"dry run: {len(tasks)} of {len(keys)} (method, seed) runs to train; {len(done)} reused", flush=True)
        return {"dry_run": True, "to_run": [[t[0], t[2]] for t in tasks], "reused": [list(k) for k in done]}
    for key, r in _run_all(tasks, ctx, args.jobs):
        done[key] = r
        _save_run(runs, keys[key], r)
        print(f"[{time.perf_counter() - t_start:7.0f}s] {key[0]} seed {key[1]}: "
              f"valid hit@10 {r['tiger']['valid_hit@10']:.4f} ({r['tiger']['seconds']:.0f} s)", flush=True)
    for spec in specs:
        entry, reach = entries[spec.name], []
        for seed in args.seeds:
            r = done[(spec.name, seed)]
            for stage in ("valid", "test", "local"):
                keep(spec.name, stage, r[stage])
            reach.append(r["reach"])
            entry["tiger"].append(r["tiger"])
            if r["din"] is not None:
                entry["din"].append(r["din"])
        entry["reachability"] = float(np.nanmean(reach))
        out_methods[spec.name] = entry

    means = {m: {st: np.mean(v, axis=0) for st, v in stages.items()} for m, stages in per_user.items()}
    _summarise(args, d, means, out_methods)
    scored = [s.name for s in specs]
    baselines = [s.name for s in specs if s.family == "baseline"]
    best_baseline = max(baselines, key=lambda m: out_methods[m]["valid"]["hit@10"]) if baselines else None
    default_method = max([s.name for s in specs if s.family != "control"] or scored,
                         key=lambda m: out_methods[m]["valid"]["hit@10"])
    if best_baseline is not None:
        _paired_against(best_baseline, [*scored, *HEURISTICS], means, no_airport, out_methods)
    identical = collision_figures(np.zeros((split.n_items, 1), dtype=np.int64), prompts=d["prompts"])["identical_prompt_share"]
    return {
        "dataset": Path(args.data).name,
        "command": " ".join(["python -m benchmarks.sid_shootout", *sys.argv[1:]]),
        "split": split.metadata(),
        "settings": {"seeds": args.seeds, "tiger_steps": args.tiger_steps, "din_epochs": args.din_epochs,
                     "codebook_sizes": d["sizes"], "levels": args.levels, "codebook_seed": args.codebook_seed,
                     "tokenizer_seed": "codebook_seed + run seed" if args.paired_seeds else "codebook_seed",
                     "local_km": args.local_km, "dedup": "append", "fitted_on": "the ranked (5-core) items",
                     "tiger": {k: v for k, v in tiger_cfg.__dict__.items()}, "threads": args.threads,
                     "jobs": args.jobs, "prompt_template": args.template, "instruction": args.instruction,
                     "device": args.device, "torch": torch.__version__,
                     "origin_embeddings": d["origin_source"]},
        "identical_prompt_share": identical,
        "targets_reachability": target_reachability(split, d["lat"], d["lon"]),
        "airport_target_share": float(1 - no_airport.mean()),
        "best_baseline": best_baseline,
        "default_method": default_method,
        "methods": out_methods,
        "wall_seconds": time.perf_counter() - t_start,
    }


def markdown(result: dict) -> str:
    rows = ["| method | family | embeddings | order | valid H@10 | valid N@10 | test H@10 | test N@10 | test no-airport H@10 "
            "| local H@10 | reach@3km | collide before dedup | max digit | vs best baseline (valid H@10 diff, 95% CI) "
            "| valid H@10 per seed |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, e in result["methods"].items():
        p = e.get("paired", {}).get("valid", {}).get("hit@10")
        pv = f"{p['mean_diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" if p else "-"
        c = e.get("collisions", {})
        local = f"{e['local']['hit@10']:.4f}" if "local" in e else "-"
        per_seed = " / ".join(f"{t['valid_hit@10']:.4f}" for t in e.get("tiger", []))
        rows.append(f"| {name} | {e['family']} | {e.get('embeddings', '-')} | {e.get('dedup_order', '-')} | "
                    f"{e['valid']['hit@10']:.4f} | {e['valid']['ndcg@10']:.4f} | {e['test']['hit@10']:.4f} | "
                    f"{e['test']['ndcg@10']:.4f} | {e['test_no_airports']['hit@10']:.4f} | {local} | ")
        rows[-1] += (f"{e.get('reachability', float('nan')):.3f} | {c.get('collision_rate_before', float('nan')):.3f} | "
                     f"{c.get('max_digit', '-')} | {pv} | {per_seed or '-'} |")
    head = (f"### {result['dataset']}: best baseline `{result['best_baseline']}`, default method "
            f"`{result['default_method']}` (both chosen on validation Hit@10)\n\n"
            f"Targets' own reachability (3 km of the last 5): {result['targets_reachability']:.3f}; identical prompts: "
            f"{result['identical_prompt_share']:.3f} of the ranked items; airport targets: "
            f"{result['airport_target_share']:.3f}; local mode over the {result['settings']['local_km']} km eligible users.\n")
    return head + "\n" + "\n".join(rows) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--tiger-steps", type=int, default=1500)
    ap.add_argument("--max-valid-users", type=int, default=1000, help="early-stopping subset of users")
    ap.add_argument("--din-epochs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), type=lambda s: s.split(","))
    ap.add_argument("--aligned", default=None)
    ap.add_argument("--dedup-order", default="item_id", choices=DEDUP_ORDERS)
    ap.add_argument("--local-km", type=float, default=5.0)
    ap.add_argument("--hub-share", type=float, default=DEFAULT_HUB_SHARE,
                    help="share of the items, most visited in training first, that a '+hubs' method gives ID-like codes")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=None)
    ap.add_argument("--codebook-seed", type=int, default=0)
    ap.add_argument("--paired-seeds", action="store_true",
                    help="refit every tokenizer per run: seed s uses codebook seed CODEBOOK_SEED + s, so the "
                         "seed spread and CIs include the tokenizer's variance (default: one fit for all seeds)")
    ap.add_argument("--dry-run", action="store_true",
                    help="fit the SIDs, list which (method, seed) runs are saved and which would train, and stop")
    ap.add_argument("--cache", default=str(ROOT / ".lgsid" / "shootout-cache"))
    ap.add_argument("--template", default=DEFAULT_TEMPLATE_NAME, choices=sorted(TEMPLATE_LINES),
                    help="prompt template of the origin embeddings (paper: no coordinates line)")
    ap.add_argument("--instruction", action="store_true", help="prefix prompts with the paper's instruction")
    ap.add_argument("--encoder", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--encoder-dtype", default="float32", choices=("float32", "auto"),
                    help="float32 (default: how the recorded tables were measured) or auto (the pipeline's default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where TIGER and DIN train and rank (the runs are keyed by it; cpu: how the recorded "
                         "2-core tables were measured)")
    ap.add_argument("--origin-npy", default=None,
                    help="precomputed origin embeddings (.npy, one row per ranked item in split order), e.g. "
                         "a --cache file from another machine; the encoder is not loaded")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (split across --jobs)")
    ap.add_argument("--jobs", type=int, default=2, help="TIGER/DIN runs in parallel processes")
    ap.add_argument("--runs", default=None,
                    help="folder of finished (method, seed) runs, reused on a rerun (default: OUT with suffix .runs)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        for m in args.methods:
            parse_method(m, args.dedup_order)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not 0.0 <= args.hub_share < 1.0:
        raise SystemExit(f"error: --hub-share must be in [0, 1), got {args.hub_share}")
    result = run(args)
    if result.get("dry_run"):
        return result
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
