"""The new-items sensor: watches a landing folder and refreshes only the cities that changed.

The cursor maps each landed file name to its fingerprint (mtime, size). A file is processed
when its name is new or its fingerprint changed; the cursor is stored by the daemon, so a
restart neither misses nor repeats a file, and each run request also carries a ``run_key``
(file + fingerprint + city) so Dagster itself refuses duplicates. Landed files are read with
the configured source's ``column_map``; a file that cannot be planned (unreadable, or no
``item_id`` after the mapping) stays out of the cursor, so it is retried on every tick until it
can be, and each tick names it and the problem in its log / skip message.
"""


import json

import dagster as dg
import polars as pl

from assets.partitions import city_partitions
from lgsid_pipeline import sources
from lgsid_pipeline.catalog import DataValidationError
from lgsid_pipeline.housekeeping import prune_cursor
from orchestration.jobs import city_refresh_job
from resources import DataSource


def _fingerprint(path) -> str:
    st = path.stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


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
    new = [p for p in files if seen.get(p.name) != _fingerprint(p)]
    if not new:
        return [], {}, prune_cursor(cursor, present), []
    column_map = dict(source.spec().column_map)
    items, _, _ = source.validated()  # includes every landed file
    id_to_city = items.valid.select("item_id", "city_key")
    by_city: dict[str, list[str]] = {}
    errors = []
    planned = []
    for path in new:
        try:
            df = sources.read_landing_items([path], column_map)
        except DataValidationError as exc:
            errors.append(f"{path.name}: not planned, retried next tick: {exc}")
            continue
        if df is None or "item_id" not in df.columns:
            found = [c for c in (df.columns if df is not None else []) if not c.startswith("__")]
            mapped = f" (column_map maps item_id from {column_map['item_id']!r})" if "item_id" in column_map else ""
            errors.append(f"{path.name}: not planned, retried next tick: {path}: landed file has no "
                          f"item_id column{mapped}; found columns {found}")
            continue
        planned.append(path)
        ids = df.select(pl.col("item_id").cast(pl.Utf8)).unique()
        for key in ids.join(id_to_city, on="item_id")["city_key"].unique().sort().to_list():
            by_city.setdefault(key, []).append(f"{path.name}@{_fingerprint(path)}")
    new_cursor = dict(seen)
    for path in planned:
        new_cursor[path.name] = _fingerprint(path)
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
    existing = set(context.instance.get_dynamic_partitions(city_partitions.name))
    added = sorted(set(by_city) - existing)
    requests = [
        dg.RunRequest(
            partition_key=city,
            run_key=f"{city}:" + ",".join(sorted(names)),
            tags={"lgsid/trigger": "new-items", "lgsid/files": ",".join(sorted(names))[:200]},
        )
        for city, names in sorted(by_city.items())
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[city_partitions.build_add_request(added)] if added else [],
        cursor=cursor,
    )
