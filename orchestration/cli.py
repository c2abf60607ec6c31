"""``lgsid``: run the pipeline headless, and read its results, from the shell.

    lgsid materialize [--data DIR] --home DIR [--select KEY,...] [--cities CITY,...] [--refit]
                      [--tables-uri s3://bucket/prefix] [--storage-options JSON]
    lgsid report --home DIR [--json]
    lgsid sid --home DIR ITEM_ID [--method M] [--k 5] [--json]
    lgsid sid --home DIR --prefix 12/7 [--method M] [--json]
    lgsid export --home DIR --to PATH [--format parquet|csv|jsonl] [--method M]
    lgsid serve (--export DIR | --home DIR) [--host 127.0.0.1] [--port 8000]
    lgsid recommend --home DIR --user U [--k 10] [--within-km D] [--json]

``materialize`` runs the asset graph in-process against a persistent Dagster instance at
``HOME/dagster`` (so ``dagster dev`` with the same DAGSTER_HOME shows every run) and writes
artefacts under ``HOME`` and the Delta tables under ``HOME/delta``, or under ``--tables-uri`` /
``$LGSID_TABLES_URI`` (e.g. ``s3://bucket/prefix``, with ``--storage-options`` /
``$LGSID_STORAGE_OPTIONS``; credentials from the ``AWS_*`` environment). The graph alternates between per-city and
cross-city assets, so it runs in topological stages: a per-city stage runs once per city
partition, a cross-city stage once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


def prepare_home(home: str) -> Path:
    """Create HOME and HOME/dagster (with a dagster.yaml) and point DAGSTER_HOME at it."""
    root = Path(home).expanduser().resolve()
    dagster_home = root / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["LGSID_HOME"] = str(root)
    return root


def open_instance(home: Path):
    """The Dagster instance at HOME/dagster. Two processes opening a brand-new home at once race
    to create its SQLite tables ("table ... already exists"), so creation is serialised with a
    file lock."""
    import fcntl

    import dagster as dg

    with open(home / "dagster" / ".instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _json_arg(text: str, flag: str, file_ok: bool = False) -> dict:
    """Parse a JSON flag (or, with ``file_ok``, a JSON file named by it) into a dict."""
    if file_ok and Path(text).is_file():
        text = Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                         f"{text[:80]!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


def _validated(cls, fields: dict, flag: str):
    """``cls(**fields)`` with pydantic's complaint reduced to the field names and reasons."""
    import pydantic

    try:
        return cls(**fields)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"{flag}: {reasons}") from None


def _source_from_args(args):
    from resources import DataSource

    if args.source_json:
        return _validated(DataSource, _json_arg(args.source_json, "--source-json"), "--source-json")
    if args.data:
        return DataSource(kind="folder", path=str(Path(args.data).resolve()), landing_dir=args.landing)
    return DataSource(kind="generator", preset=args.preset, seed=args.seed, landing_dir=args.landing)


def stages(defs, selection: set | None):
    """Topologically ordered stages [(is_city_stage, [asset keys])] of the selected assets."""
    from orchestration.refit import plan_stages

    return plan_stages(defs.resolve_asset_graph(), selection)


class StageFailed(RuntimeError):
    pass


def materialize_graph(defs, instance, cities: list[str], selection: set | None = None, *,
                      run_config: dict | None = None, echo=print, tags: dict | None = None,
                      batch_size: int | None = None, jobs: int = 1, rebuild: dict | None = None):
    """Materialize the selected assets stage by stage (per-city stages once per batch of at
    most ``batch_size`` contiguous cities, default ``CITY_BATCH``; 1 gives one run per city).

    ``jobs > 1`` runs the batches of one per-city stage in that many spawned worker processes
    (each its own Dagster run, as the daemon's run queue would; stages still follow each other
    in order). A worker rebuilds the definitions from ``rebuild``, the ``lgsid materialize``
    options as plain values (resources do not cross a process boundary), and opens the same
    instance. The per-city file locks keep each city's writer alone across processes, and each
    worker gets ``cores // jobs`` torch threads.

    Returns the stage plan; raises :class:`StageFailed` naming the stage, city and run.
    """
    if jobs > 1 and rebuild is None:
        raise ValueError("jobs > 1 needs `rebuild` (the materialize options the worker processes rebuild from)")
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    # Loading definitions reads "defs state" through a context variable. Bind it to this run's
    # instance: a stale binding left by another, already closed instance in the same process
    # would otherwise fail with "undefined DagsterInstance weakref".
    with set_defs_state_storage(instance.defs_state_storage):
        return _materialize_stages(defs, instance, cities, selection, run_config, echo, tags, batch_size,
                                   jobs, rebuild)


def _where(batch: list[str] | None) -> str:
    return ("all cities" if batch is None else f"city {batch[0]}" if len(batch) == 1
            else f"cities {batch[0]}..{batch[-1]} ({len(batch)})")


def _run_batch(defs, instance, keys, batch, stage_config, tags):
    """One Dagster run of the stage ``keys`` over ``batch`` (None: a cross-city stage), holding
    the batch's city locks; returns the run's result."""
    import dagster as dg

    from contextlib import ExitStack

    from assets.partitions import batch_request_args

    from lgsid_pipeline.partitions import validate_city_key
    from lgsid_pipeline.train_state import artefact_lock

    home = (defs.resources or {}).get("home")
    locks = Path(home.root()) / "locks" if home is not None else None
    if locks is not None:
        locks.mkdir(exist_ok=True)
    all_assets = list(defs.assets or []) + list(defs.asset_checks or [])
    # One writer per city and home: a second `lgsid materialize` of the same city waits for
    # the first instead of interleaving its writes (the pools limit the trainers). Locks
    # are taken in key order, so two overlapping batches cannot deadlock.
    with ExitStack() as held:
        for city in sorted(batch or []):
            if locks is not None:
                held.enter_context(artefact_lock(locks / f"city-{validate_city_key(city)}"))
        args = batch_request_args(batch) if batch else {}
        return dg.materialize(all_assets, selection=keys, partition_key=args.get("partition_key"),
                              instance=instance, resources=defs.resources, run_config=stage_config,
                              raise_on_error=False,
                              tags={"lgsid/trigger": "cli", **(tags or {}), **args.get("tags", {})})


_WORKER: dict = {}


def _batch_worker_init(options: dict, threads: int) -> None:
    """A spawned batch worker: its own definitions (from the materialize command's ``options``)
    and instance handle, and ``threads`` torch threads."""
    os.environ.setdefault("POLARS_MAX_THREADS", str(threads))
    import torch
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    from orchestration.definitions import build_defs

    torch.set_num_threads(threads)
    _, rebuild = _defs_inputs(argparse.Namespace(**options))
    _WORKER["instance"] = instance = open_instance(Path(rebuild["home"]))
    with set_defs_state_storage(instance.defs_state_storage):
        _WORKER["defs"] = build_defs(**rebuild)


def _batch_worker_run(task: tuple) -> tuple[list[str], bool, str, float]:
    import dagster as dg
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    keys, batch, stage_config, tags = task
    start = time.perf_counter()
    instance = _WORKER["instance"]
    with set_defs_state_storage(instance.defs_state_storage):
        result = _run_batch(_WORKER["defs"], instance, [dg.AssetKey.from_user_string(k) for k in keys], batch,
                            stage_config, tags)
    return batch, bool(result.success), result.run_id, time.perf_counter() - start


def _materialize_stages(defs, instance, cities, selection, run_config, echo, tags, batch_size=None, jobs=1,
                        rebuild=None):
    plan = stages(defs, selection)
    pool = None
    try:
        for i, (is_city, keys) in enumerate(plan, 1):
            pool = _stage(i, plan, is_city, keys, defs, instance, cities, run_config, echo, tags, batch_size, jobs,
                          rebuild, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return plan


def _stage(i, plan, is_city, keys, defs, instance, cities, run_config, echo, tags, batch_size, jobs, rebuild, pool):
    """Run stage ``i`` of ``plan``; returns the worker pool (created on the first parallel stage)."""
    from assets.partitions import batches_for

    names = ", ".join(k.to_user_string() for k in keys)
    stage_config = dict(run_config or {})
    if "ops" in stage_config:  # only the config of this stage's assets
        stage_config["ops"] = {op: c for op, c in stage_config["ops"].items()
                               if op in {k.to_user_string() for k in keys}}
    # A per-city stage runs once per batch of contiguous cities (a partition range), not once
    # per city: the run's fixed cost is paid per batch.
    batches = batches_for(instance, cities, batch_size) if is_city else [None]
    if jobs > 1 and len(batches) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if pool is None:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_batch_worker_init,
                                       initargs=(rebuild, threads))
        echo(f"[{i}/{len(plan)}] {len(batches)} batches of cities on {jobs} workers: {names} ...", flush=True)
        futures = [pool.submit(_batch_worker_run, ([k.to_user_string() for k in keys], b, stage_config, tags))
                   for b in batches]
        failed = []
        for f in as_completed(futures):
            batch, ok, run_id, seconds = f.result()
            if not ok:
                failed.append(f"{_where(batch)} (run {run_id})")
            echo(f"[{i}/{len(plan)}] {_where(batch)}: {'done' if ok else 'FAILED'} in {seconds:.1f}s", flush=True)
        if failed:
            raise StageFailed(f"at {'; '.join(sorted(failed))}: {names}")
        return pool
    for batch in batches:
        start = time.perf_counter()
        where = _where(batch)
        echo(f"[{i}/{len(plan)}] {where}: {names} ...", flush=True)
        result = _run_batch(defs, instance, keys, batch, stage_config, tags)
        if not result.success:
            raise StageFailed(f"at {where}: {names} (run {result.run_id})")
        echo(f"[{i}/{len(plan)}] {where}: done in {time.perf_counter() - start:.1f}s", flush=True)
    return pool


def resolve_cities(requested: str | None, available: list[str]) -> list[str]:
    from lgsid_pipeline.partitions import sanitize_city_key

    if not requested:
        return available
    wanted = []
    for name in [c.strip() for c in requested.split(",") if c.strip()]:
        key = name if name in available else sanitize_city_key(name)
        matches = [k for k in available if k == key or k.startswith(key + "-")]
        if not matches:
            raise SystemExit(f"lgsid: unknown city {name!r}; available: {', '.join(available)}")
        wanted.extend(m for m in matches if m not in wanted)
    return wanted


def _defs_inputs(args):
    """(source, build_defs keyword arguments) from the materialize command line; batch workers
    call it on the same options, so they build the same definitions."""
    from resources import EncoderResource

    from resources.uris import parse_storage_options

    source = _source_from_args(args)
    encoder = None
    if args.encoder_json:
        encoder = _validated(EncoderResource, _json_arg(args.encoder_json, "--encoder-json"), "--encoder-json")
        try:  # fail here, not half-way through a run
            encoder.config(), encoder.template()
        except ValueError as exc:
            raise UsageError(f"--encoder-json: {exc}") from None
    storage_options = (parse_storage_options(args.storage_options, "--storage-options")
                       if args.storage_options else None)
    return source, {"home": str(Path(args.home).expanduser().resolve()), "source": source, "encoder": encoder,
                    "tables_uri": args.tables_uri or None, "storage_options": storage_options}


def cmd_materialize(args) -> int:
    if sys.stderr.isatty() and "LGSID_PROGRESS" not in os.environ:
        os.environ["LGSID_PROGRESS"] = "bar"  # tqdm bars for the long steps; plain logs otherwise
    home = prepare_home(args.home)
    import dagster as dg

    from orchestration.definitions import build_defs

    source, rebuild = _defs_inputs(args)
    if args.tables_uri:  # the same location for anything in this process that reads the environment
        os.environ["LGSID_TABLES_URI"] = args.tables_uri
    if args.storage_options:
        os.environ["LGSID_STORAGE_OPTIONS"] = json.dumps(rebuild["storage_options"])
    defs = build_defs(**rebuild)
    instance = open_instance(home)
    log = logging.getLogger("lgsid")
    t0 = time.perf_counter()
    available = source.city_keys()
    cities = resolve_cities(args.cities, available)
    if not cities:
        raise SystemExit("lgsid: the dataset has no cities")
    instance.add_dynamic_partitions("city", cities)
    selection = None
    if args.refit and args.select:
        raise SystemExit("lgsid: --refit selects its own assets (the trained models and their dependants); "
                         "drop --select")
    if args.refit:
        from orchestration.refit import refit_selection

        selection = refit_selection(defs.resolve_asset_graph())
    if args.select:
        selection = {dg.AssetKey(k.strip()) for k in args.select.split(",") if k.strip()}
        known = set(defs.resolve_asset_graph().get_all_asset_keys())
        unknown = sorted(k.to_user_string() for k in selection - known)
        if unknown:
            raise SystemExit(f"lgsid: unknown asset key(s) {unknown}")
    print(f"lgsid: dataset {source.describe()}, {len(cities)} cities: {', '.join(cities)}", flush=True)
    print(f"lgsid: home {home} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
    print(f"lgsid: Delta tables at {defs.resources['home'].tables_root_uri()}", flush=True)
    run_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    if args.run_config:
        run_config["ops"] = _json_arg(args.run_config, "--run-config", file_ok=True).get("ops", {})
    if args.refit:
        from orchestration.refit import REFIT_RUN_CONFIG

        for op, cfg in REFIT_RUN_CONFIG["ops"].items():
            merged = run_config.setdefault("ops", {}).setdefault(op, {}).setdefault("config", {})
            merged.update(cfg["config"])
    try:
        plan = materialize_graph(defs, instance, cities, selection, run_config=run_config,
                                 batch_size=args.city_batch, jobs=args.jobs,
                                 rebuild={k: v for k, v in vars(args).items() if k != "func"})
    except StageFailed as exc:
        log.error("%s", exc)
        print(f"lgsid: FAILED {exc}; see the run's logs in the UI or above", file=sys.stderr, flush=True)
        return 1
    print(f"lgsid: materialized {sum(len(k) for _, k in plan)} assets in {time.perf_counter() - t0:.1f}s",
          flush=True)
    print(f"lgsid: open the UI with `DAGSTER_HOME={os.environ['DAGSTER_HOME']} make ui` "
          "(http://127.0.0.1:3000)", flush=True)
    return 0


def _metadata_value(value):
    raw = getattr(value, "value", value)
    if hasattr(raw, "md_str"):
        return raw.md_str
    if hasattr(raw, "records") and hasattr(raw, "schema"):  # a typed table
        return [dict(r.data) for r in raw.records]
    if hasattr(raw, "path"):
        return raw.path
    if hasattr(raw, "columns"):  # TableSchema
        return [{"name": c.name, "type": c.type} for c in raw.columns]
    try:
        json.dumps(raw)
        return raw
    except Exception:
        return str(raw)


def collect_report(instance) -> dict:
    """Latest materialization metadata of every asset (per partition for per-city assets)."""
    import dagster as dg

    report: dict[str, dict] = {}
    for key in instance.get_asset_keys():
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
        entry: dict[str, dict] = {}
        for rec in records:  # newest first
            mat = rec.asset_materialization
            if mat is None:
                continue
            part = mat.partition or "__all__"
            if part in entry:
                continue
            entry[part] = {
                "run_id": rec.run_id,
                "timestamp": rec.timestamp,
                "metadata": {k: _metadata_value(v) for k, v in mat.metadata.items()},
            }
        report[key.to_user_string()] = entry
    return report


def cmd_report(args) -> int:
    instance = open_instance(prepare_home(args.home))
    report = collect_report(instance)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for asset, parts in sorted(report.items()):
            print(f"{asset}: {len(parts)} partition(s)")
            for part, info in sorted(parts.items()):
                scalars = {k: v for k, v in info["metadata"].items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in list(scalars.items())[:8])
                print(f"  {part}: {shown}")
    return 0


def _open_home(args, command: str, tables=("sid_table", "item_catalog")):
    """(root, LgsidHome) of ``--home``, with the tables ``command`` needs already materialized."""
    from resources import LgsidHome

    root = Path(args.home).resolve()
    if not root.is_dir():
        raise UsageError(f"lgsid {command}: home {root} does not exist; run `lgsid materialize --home {args.home}` first")
    home = LgsidHome(home=str(root), tables_uri=getattr(args, "tables_uri", None) or None)
    for table in tables:
        if not home.table_exists(table):
            raise UsageError(f"lgsid {command}: {root} has no {table} table yet; materialize {table} first")
    return root, home


def _codebook_manifest(home) -> dict:
    current = home.current("sid_codebook")
    path = None if current is None else current / "manifest.json"
    if path is None or not path.is_file():
        return {"variants": {}}
    from lgsid_pipeline.train_state import load_json

    try:
        return load_json(path, "the SID codebook manifest")
    except ValueError as exc:
        raise UsageError(f"{exc}; re-materialize sid_codebook with refit=True or restore the file") from None


def _current_sids(home, manifest: dict):
    import polars as pl

    sids = home.read("sid_table")
    return sids.filter(pl.col("codebook_version") == manifest["version"]) if manifest.get("version") else sids


def _evaluation_dir(home):
    """The current recommender_evaluations artefact (serving cache and saved TIGER model), or None."""
    return home.current("recommender_evaluations")


def _serving_cache(home):
    """The current evaluation's serving cache (user_topk.parquet), or None before there is one."""
    import polars as pl

    ev = _evaluation_dir(home)
    path = None if ev is None else ev / "user_topk.parquet"
    return pl.read_parquet(path) if path is not None and path.is_file() else None


def cmd_sid(args) -> int:
    """``lgsid sid``: one item's SIDs and neighbours, or the items behind a SID prefix."""
    from lgsid_pipeline.serving.lookup import SIDLookupError, item_report, parse_prefix, prefix_report

    if bool(args.item_id) == bool(args.prefix):
        raise UsageError("lgsid sid: give either an ITEM_ID or --prefix CODES (e.g. --prefix 12/7)")
    _, home = _open_home(args, "sid")
    manifest = _codebook_manifest(home)
    sids, items = _current_sids(home, manifest), home.read("item_catalog")
    try:
        if args.prefix:
            report = prefix_report(parse_prefix(args.prefix), sids, items, method=args.method, limit=args.limit)
        else:
            emb = home.read("item_embeddings") if home.table_exists("item_embeddings") else None
            report = item_report(args.item_id, sids, items, emb, manifest.get("variants", {}), method=args.method,
                                 k=args.k)
    except SIDLookupError as exc:
        raise UsageError(f"lgsid sid: {exc}") from None
    report["codebook_version"] = manifest.get("version")
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(_sid_text(report))
    return 0


def cmd_export(args) -> int:
    """``lgsid export``: the SID table (+ codebook and embedding versions) and the serving cache."""
    from lgsid_pipeline.serving.index import ServingError, export_tables

    root, home = _open_home(args, "export")
    manifest = _codebook_manifest(home)
    topk = _serving_cache(home)
    try:
        out = export_tables(args.to, _current_sids(home, manifest), home.read("item_catalog"), manifest, topk,
                            fmt=args.format, method=args.method, source=str(root))
    except ServingError as exc:
        raise UsageError(f"lgsid export: {exc}") from None
    if args.json:
        json.dump(out, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"exported codebook {out['codebook_version']} to {Path(args.to).resolve()} ({out['format']})")
    for name, spec in out["files"].items():
        print(f"  {spec['file']}: {spec['rows']} rows")
    for m, spec in out["methods"].items():
        print(f"  method {m}: {spec['items']} items, fitted on {spec['embedding_variant']} embeddings "
              f"(encoder {spec['encoder_version']})")
    if topk is None:
        print("  (no serving cache yet: materialize recommender_evaluations to export user_topk too)")
    return 0


def _serving_index(args):
    from lgsid_pipeline.serving.index import ServingError, ServingIndex, read_export, sid_export_frame, topk_export_frame

    if bool(args.export) == bool(args.home):
        raise UsageError("lgsid serve: give either --export DIR (from `lgsid export`) or --home DIR")
    if args.export:
        try:
            manifest, sids, topk = read_export(args.export)
        except ServingError as exc:
            raise UsageError(f"lgsid serve: {exc}") from None
        return ServingIndex(sids, topk, manifest=manifest)
    _, home = _open_home(args, "serve")
    manifest = _codebook_manifest(home)
    sids = sid_export_frame(_current_sids(home, manifest), home.read("item_catalog"), manifest)
    cache = _serving_cache(home)
    topk = None if cache is None else topk_export_frame(cache)
    return ServingIndex(sids, topk, manifest={"codebook_version": manifest.get("version"),
                                              "default_method": manifest.get("default_variant")})


def cmd_serve(args) -> int:
    """``lgsid serve``: the read-only HTTP service (FastAPI on uvicorn)."""
    index = _serving_index(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"lgsid serve: listening on {args.host}, beyond this machine; the service has no authentication, "
              "so put it behind your gateway", file=sys.stderr)
    from orchestration.serve import run

    print(f"lgsid serve: {index.health()['items']} items, {index.health()['users_cached']} cached users on "
          f"http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    run(index, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_recommend(args) -> int:
    """``lgsid recommend``: a user's top-K from the cache, or from the saved TIGER model."""
    import polars as pl

    from lgsid_pipeline.recommenders.data import user_history
    from lgsid_pipeline.recommenders.tiger import load_tiger, saved_item_ids
    from lgsid_pipeline.serving.index import ServingError, recommend

    _, home = _open_home(args, "recommend", tables=("item_catalog", "user_interactions"))
    ev = _evaluation_dir(home)
    if ev is None:
        raise UsageError("lgsid recommend: no recommender_evaluations yet; materialize it first")
    cache = _serving_cache(home)
    interactions = home.read("user_interactions")
    history = [str(h) for h in user_history(interactions, args.user)]
    if not history and (cache is None or cache.filter(pl.col("user_id") == args.user).is_empty()):
        raise UsageError(f"lgsid recommend: unknown user {args.user!r} (no interactions and not in the cache)")

    def loader():
        d = ev / "tiger"
        if not (d / "model.safetensors").is_file():
            raise ServingError("no saved TIGER model in the current evaluation run")
        ids = saved_item_ids(d)
        if ids is None:
            raise ServingError("the saved TIGER model predates item ids in its config; re-materialize "
                               "recommender_evaluations")
        model, codec = load_tiger(d)
        return model, codec, ids

    try:
        out = recommend(args.user, k=args.k, within_km=args.within_km, cache=cache, history=history,
                        items=home.read("item_catalog"), model_loader=loader)
    except (ServingError, ValueError) as exc:
        raise UsageError(f"lgsid recommend: {exc}") from None
    if args.json:
        json.dump(out, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    where = f" within {args.within_km} km" if args.within_km else ""
    print(f"user {out['user_id']}: top {len(out['items'])}{where} from the {out['source']} "
          f"(last place {out['last_item']})")
    for r in out["items"]:
        km = "-" if r["km"] is None else f"{r['km']:.2f} km"
        sid = "/".join(map(str, r["sid"])) if r.get("sid") else "-"
        print(f"  {r['rank']:>3}  {r['item_id']:<24} {sid:>16}  {km:>10}  score {r['score']:.3f}")
    return 0


def _sid_text(report: dict) -> str:
    lines = []
    if "prefix" in report:
        lines.append(f"prefix {'/'.join(map(str, report['prefix']))} (codebook {report.get('codebook_version')})")
        for m, e in report["methods"].items():
            cities = ", ".join(f"{c} {n}" for c, n in e["cities"].items())
            lines.append(f"  {m}: {e['items']} item(s){' in ' + cities if cities else ''}")
            for r in e["shown"]:
                lines.append(f"    {'/'.join(map(str, r['sid'])):>16}  {r['item_id']}  {r.get('name') or ''}"
                             f"  ({r.get('city') or r.get('city_key') or '?'})")
        return "\n".join(lines)
    head = f"{report['item_id']}  {report.get('name') or ''}  ({report.get('city') or report.get('city_key') or '?'})"
    lines.append(f"{head}  codebook {report.get('codebook_version')}")
    for m, e in report["methods"].items():
        if e.get("sid") is None:
            lines.append(f"  {m}: {e.get('note')}")
            continue
        lines.append(f"  {m}: SID {'/'.join(map(str, e['sid']))}")
        lines.append("    nearest in SID space (shared prefix, km):")
        for n in e["sid_neighbours"]:
            lines.append(f"      {'/'.join(map(str, n['sid'])):>16}  {n['item_id']}  {n.get('name') or ''}"
                         f"  prefix {n['shared_prefix']}  {n['km']:.2f} km")
        if e.get("embedding_neighbours"):
            lines.append(f"    nearest in {e['embedding_variant']} embedding space (cosine, km):")
            for n in e["embedding_neighbours"]:
                lines.append(f"      {n['item_id']}  {n.get('name') or ''}  cos {n['cosine']:.3f}  {n['km']:.2f} km")
    return "\n".join(lines)


def _add_tables_uri(parser) -> None:
    parser.add_argument("--tables-uri", help="where the Delta tables live (default: $LGSID_TABLES_URI, else HOME/delta)")


def _add_materialize(sub) -> None:
    m = sub.add_parser("materialize", help="materialize the asset graph for every city partition")
    m.add_argument("--home", required=True, help="output folder (Delta tables, artefacts, Dagster instance)")
    m.add_argument("--data", help="dataset folder in the shared schema (default: the embedded world)")
    m.add_argument("--source-json", help="DataSource config as JSON (files, yelp, foursquare, column_map)")
    m.add_argument("--preset", default="demo", help="embedded world preset (test, demo, ...)")
    m.add_argument("--seed", type=int, default=0, help="embedded world seed")
    m.add_argument("--landing", help="landing folder of new item files")
    m.add_argument("--select", help="comma-separated asset keys (default: all)")
    m.add_argument("--refit", action="store_true",
                   help="refit the trained models and rebuild everything that depends on them, in order "
                        "(reward model, G-DPO encoder, every city's embeddings, a new codebook version, "
                        "every city's SIDs, evaluations, serving cache); --select is not allowed with it")
    m.add_argument("--cities", help="comma-separated city names or keys (default: all)")
    m.add_argument("--city-batch", type=_positive_int, default=None,
                   help="most cities one per-city run materializes (default: CITY_BATCH, 64; 1 = a run per city)")
    m.add_argument("--jobs", type=_positive_int, default=1,
                   help="worker processes for the batches of one per-city stage (default 1: batches in turn; "
                        "each worker gets cores/jobs threads; combine with --city-batch to have several batches)")
    m.add_argument("--encoder-json", help="EncoderResource config as JSON (e.g. a model_path)")
    m.add_argument("--tables-uri", help="where the Delta tables live: a local path or s3://bucket/prefix "
                                        "(default: $LGSID_TABLES_URI, else HOME/delta)")
    m.add_argument("--storage-options", help='delta-rs storage options as JSON, e.g. {"AWS_REGION": '
                                             '"eu-west-1", "AWS_ENDPOINT_URL": "..."} (default: '
                                             "$LGSID_STORAGE_OPTIONS); keep credentials in the AWS_* "
                                             "environment variables")
    m.add_argument("--run-config", help='asset config as JSON (or a JSON file): {"ops": {"reward_model": '
                                       '{"config": {"epochs": 10}}}}')
    m.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    m.set_defaults(func=cmd_materialize)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="print the latest metadata and metrics of each asset")
    r.add_argument("--home", required=True)
    r.add_argument("--json", action="store_true", help="machine-readable JSON")
    r.set_defaults(func=cmd_report)


def _add_sid(sub) -> None:
    q = sub.add_parser("sid", help="look up an item's SIDs and neighbours, or the items behind a SID prefix")
    q.add_argument("item_id", nargs="?", help="the item to look up")
    q.add_argument("--home", required=True)
    q.add_argument("--prefix", help="list the items whose SID starts with these codes, e.g. 12/7")
    q.add_argument("--method", help="one tokenizer variant (default: every method in the SID table)")
    q.add_argument("--k", type=int, default=5, help="neighbours to show per space")
    q.add_argument("--limit", type=int, default=50, help="items to show under a prefix")
    _add_tables_uri(q)
    q.add_argument("--json", action="store_true", help="machine-readable JSON")
    q.set_defaults(func=cmd_sid)


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write the SID table and the serving cache for a serving system")
    e.add_argument("--home", required=True)
    e.add_argument("--to", required=True, help="output folder (sid_table.*, user_topk.*, manifest.json)")
    e.add_argument("--format", default="parquet", choices=["parquet", "csv", "jsonl"])
    e.add_argument("--method", help="one tokenizer variant (default: every method)")
    _add_tables_uri(e)
    e.add_argument("--json", action="store_true", help="print the export manifest as JSON")
    e.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="a read-only HTTP service over an export or a home")
    v.add_argument("--export", help="an `lgsid export` folder")
    v.add_argument("--home", help="or a pipeline home")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    _add_tables_uri(v)
    v.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    v.set_defaults(func=cmd_serve)


def _add_recommend(sub) -> None:
    c = sub.add_parser("recommend", help="a user's top-K: from the serving cache, else the saved TIGER model")
    c.add_argument("--home", required=True)
    c.add_argument("--user", required=True)
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--within-km", type=float, default=None, help="only items this near the user's last place")
    _add_tables_uri(c)
    c.add_argument("--json", action="store_true", help="machine-readable JSON")
    c.set_defaults(func=cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgsid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_materialize(sub)
    _add_report(sub)
    _add_sid(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_recommend(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lgsid_pipeline.data.catalog import DataValidationError
    from resources.delta_io import DeltaLogError

    try:
        return args.func(args)
    except Exception as exc:
        import dagster as dg

        if os.environ.get("LGSID_DEBUG"):
            raise
        if isinstance(exc, dg.DagsterInvalidConfigError):  # a config value outside its type or choices
            message = "--run-config does not fit the assets' config: " + "; ".join(e.message for e in exc.errors)
        elif isinstance(exc, UsageError | DataValidationError | FileNotFoundError | DeltaLogError):
            message = str(exc)
        else:
            raise
        print(f"lgsid: error: {message}", file=sys.stderr)
        print("lgsid: (set LGSID_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
