"""The new-items sensor: watches a landing folder and refreshes only the cities that changed.

The cursor maps each landed file name to its fingerprint (mtime, size and a content digest).
A file is processed when its name is new or its content changed (a ``touch`` is not a landing); the cursor is stored by the daemon, so a
restart neither misses nor repeats a file, and each run request also carries a ``run_key``
(file + fingerprint + city) so Dagster itself refuses duplicates. Landed files are read with
the configured source's ``column_map``; a file that cannot be planned (unreadable, or no
``item_id`` after the mapping) stays out of the cursor, so it is retried on every tick until it
can be, and each tick names it and the problem in its log / skip message.
"""


import hashlib
import json

import dagster as dg
import polars as pl

from assets.partitions import city_partitions
from lgsid_pipeline.data import sources
from lgsid_pipeline.data.catalog import DataValidationError, landed_city_keys
from lgsid_pipeline.housekeeping import prune_cursor
from lgsid_pipeline.partitions import city_batches
from assets.partitions import batch_request_args
from orchestration.jobs import city_refresh_job
from resources import DataSource


def _content_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _fingerprint(path, seen: str | None = None) -> str:
    """``mtime:size:sha`` of a landed file. A file is new when its *content* changed: the
    digest is recomputed only when mtime or size moved (a ``touch`` or a copy that keeps the
    bytes is not a new landing; a same-size rewrite within one mtime tick is caught once the
    mtime moves). Entries of the older ``mtime:size`` form are upgraded in place."""
    st = path.stat()
    stat = f"{st.st_mtime_ns}:{st.st_size}"
    if seen and (seen == stat or seen.rsplit(":", 1)[0] == stat):
        return seen if seen != stat else f"{stat}:{_content_digest(path)}"
    return f"{stat}:{_content_digest(path)}"


def _unchanged(old: str | None, now: str) -> bool:
    """The cursor's entry still describes the file (an old ``mtime:size`` entry included)."""
    return old == now or (old is not None and old.count(":") == 1 and now.rsplit(":", 1)[0] == old)


def _same_content(a: str | None, b: str) -> bool:
    return a is not None and a.count(":") == 2 and a.rsplit(":", 1)[1] == b.rsplit(":", 1)[1]


def plan_landing(landing_dir: str | None, cursor: str | None, source: DataSource):
    """Pure sensor logic: (new files, {city_key: ["name@fingerprint"]}, new cursor, errors).

    Landed files are read with the configured source's ``column_map`` (as ``load_source`` reads
    them). A file that cannot be planned (unreadable, or no ``item_id`` column after the
    mapping) is *not* recorded in the cursor: it is retried on the next tick, and its error,
    naming the file and the problem, is returned in ``errors``.
    """
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    files = sources.landing_files(landing_dir)
    present = {p.name for p in files}
    prints = {p.name: _fingerprint(p, seen.get(p.name)) for p in files}
    new = [p for p in files if not _unchanged(seen.get(p.name), prints[p.name])]
    # same bytes, new mtime (a touch, a re-copy): not a landing; the cursor takes the new stat
    refreshed = {p.name for p in new if _same_content(seen.get(p.name), prints[p.name])}
    new = [p for p in new if p.name not in refreshed]
    if not new:
        upgraded = dict(seen) | {n: prints[n] for n in refreshed | (set(seen) & present)}
        return [], {}, prune_cursor(json.dumps(upgraded, sort_keys=True) if seen else cursor, present), []
    spec = source.spec()
    column_map = dict(spec.column_map)
    # The tick reads the landed files and the items file's location columns, never the whole
    # dataset: a city key depends on every (province, city), nothing else is needed to plan.
    errors = []
    frames = {}
    for path in files:
        try:
            frames[path.name] = sources.read_landing_items([path], column_map)
        except DataValidationError as exc:
            if path in new:
                errors.append(f"{path.name}: not planned, retried next tick: {exc}")
    try:
        locations = sources.item_locations(spec)
    except DataValidationError as exc:
        return [], {}, cursor, [f"landing not planned, retried next tick: {exc}"]
    if spec.default_city is not None:
        frames = {n: (f if f is None or "city" in f.columns else
                      f.with_columns(pl.lit(spec.default_city).alias("city"),
                                     pl.lit(spec.default_province).alias("province")))
                  for n, f in frames.items()}
    every_landed = [f for f in frames.values() if f is not None and "item_id" in f.columns]
    landed_locations = (pl.concat([f.select(*(pl.col(c).cast(pl.Utf8) if c in f.columns else
                                              pl.lit(None, dtype=pl.Utf8).alias(c) for c in ("province", "city")))
                                   for f in every_landed]) if every_landed else None)
    if landed_locations is not None:
        locations = pl.concat([locations.select("province", "city"), landed_locations])
    by_city: dict[str, list[str]] = {}
    planned = []
    for path in new:
        if path.name not in frames:
            continue
        df = frames[path.name]
        if df is None or "item_id" not in df.columns:
            found = [c for c in (df.columns if df is not None else []) if not c.startswith("__")]
            mapped = f" (column_map maps item_id from {column_map['item_id']!r})" if "item_id" in column_map else ""
            errors.append(f"{path.name}: not planned, retried next tick: {path}: landed file has no "
                          f"item_id column{mapped}; found columns {found}")
            continue
        planned.append(path)
        keys = landed_city_keys(df.filter(pl.col("item_id").is_not_null()), locations)
        for key in keys["city_key"].unique().sort().to_list():
            by_city.setdefault(key, []).append(f"{path.name}@{prints[path.name]}")
    unchanged = (set(seen) & present) - {p.name for p in new}  # a changed file is recorded only once planned
    new_cursor = dict(seen) | {n: prints[n] for n in refreshed | unchanged}
    for path in planned:
        new_cursor[path.name] = prints[path.name]
    # bounded: files that left the landing folder leave the cursor (a file that comes back is new)
    return planned, by_city, prune_cursor(json.dumps(new_cursor, sort_keys=True), present), errors


@dg.sensor(job=city_refresh_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Watches the landing folder (DataSource.landing_dir / LGSID_LANDING) for new item "
                       "files; adds new city partitions and refreshes only the cities whose items changed.")
def new_items_sensor(context: dg.SensorEvaluationContext, source: DataSource):
    if not source.landing_dir:
        return dg.SkipReason("no landing folder configured (set LGSID_LANDING or DataSource.landing_dir)")
    new, by_city, cursor, errors = plan_landing(source.landing_dir, context.cursor, source)
    for err in errors:
        context.log.warning(err)
    if not new:
        if errors:
            return dg.SkipReason(f"{len(errors)} landed file(s) could not be planned and will be "
                                 "retried on the next tick: " + " | ".join(errors)[:4000])
        if cursor != context.cursor:  # files left the folder: store the smaller cursor
            return dg.SensorResult(skip_reason="no new or changed files in the landing folder", cursor=cursor)
        return dg.SkipReason("no new or changed files in the landing folder")
    order = list(context.instance.get_dynamic_partitions(city_partitions.name))
    added = sorted(set(by_city) - set(order))
    # One run per batch of changed cities that are contiguous in the partition order (new cities
    # are appended, so they batch together); cities whose items did not change are not run.
    requests = []
    for batch in city_batches(sorted(by_city), order + added):
        names = sorted({n for c in batch for n in by_city[c]})
        args = batch_request_args(batch)
        run_key = ",".join(batch) + ":" + ",".join(names)
        if len(run_key) > 512:  # a digest keeps Dagster's run key short and still exact
            run_key = f"{batch[0]}..{batch[-1]}:" + hashlib.sha256(run_key.encode()).hexdigest()
        requests.append(dg.RunRequest(
            partition_key=args.get("partition_key"), run_key=run_key,
            tags={"lgsid/trigger": "new-items", "lgsid/files": ",".join(names)[:200], **args.get("tags", {})}))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[city_partitions.build_add_request(added)] if added else [],
        cursor=cursor,
    )
