"""The refit of the trained models, and everything that depends on them, in the right order.

A refit retrains the reward model and the G-DPO encoder. Everything downstream then has to be
rebuilt from the new adapter: every city's item embeddings, the SID codebook (a new version,
fitted on those embeddings), every city's SIDs, the evaluations, and the serving cache. The
graph alternates between cross-city and per-city assets, so no single Dagster run can hold it
(a run has at most one partition). :func:`refit_plan` orders it into stages (the same
topological staging as ``lgsid materialize``), and the refit runs them one after another:

- ``lgsid materialize --refit`` runs the stages in-process, in order;
- from the UI or the weekly schedule, ``global_refit_job`` runs the first stages (the
  cross-city models), and :data:`refit_chain_sensor` launches each later stage once every run
  of the previous one succeeded (one run per city for a per-city stage), tagging every run with
  ``lgsid/refit = <id of the starting run>`` and ``lgsid/refit_stage``. A failed or cancelled run
  stops the chain at its stage (the sensor says so on every tick); nothing later runs on
  half-rebuilt inputs.
"""

from __future__ import annotations

import json

import dagster as dg

from assets import CITY_ASSET_KEYS
from assets.partitions import batch_request_args, city_partitions, tags_cities
from lgsid_pipeline.partitions import city_batches

REFIT_ROOTS = ("reward_model",)
"""The trained models a refit starts from; the refit covers them and all their dependants."""
REFIT_RUN_CONFIG = {"ops": {"sid_codebook": {"config": {"refit": True}}}}
"""Run config of a refit: the codebook is refitted (a version bump), not reused."""


def plan_stages(graph, selection: set | None):
    """Topologically ordered stages [(is_city_stage, [asset keys])] of the selected assets:
    each asset goes in the earliest stage of its kind after all its selected parents."""
    out: list[tuple[bool, list]] = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable or (selection is not None and key not in selection):
            continue
        is_city = node.partitions_def is not None
        deps = [p for p in node.parent_keys if selection is None or p in selection]
        earliest = 0
        for i, (_, keys) in enumerate(out):
            if any(d in keys for d in deps):
                earliest = i + 1
        for i in range(earliest, len(out)):
            if out[i][0] == is_city:
                out[i][1].append(key)
                break
        else:
            out.append((is_city, [key]))
    return out


def refit_selection(graph) -> set:
    return set(dg.AssetSelection.assets(*REFIT_ROOTS).downstream().resolve(graph))


def refit_plan(graph):
    """The refit's stages (see :func:`plan_stages`)."""
    return plan_stages(graph, refit_selection(graph))


def leading_global_stages(plan) -> int:
    """How many stages at the start of ``plan`` are cross-city (one run can hold them all)."""
    n = 0
    while n < len(plan) and not plan[n][0]:
        n += 1
    return n


def stage_run_config(keys) -> dict:
    """The refit's op config restricted to one stage's assets (a run rejects config of ops it lacks)."""
    names = {k.to_user_string() for k in keys}
    return {"ops": {op: c for op, c in REFIT_RUN_CONFIG["ops"].items() if op in names}}


# The jobs' selections as asset-selection algebra (resolved by Dagster against the code location):
_REFIT = dg.AssetSelection.assets(*REFIT_ROOTS).downstream()
_REFIT_CITY = _REFIT & dg.AssetSelection.assets(*CITY_ASSET_KEYS)
_START_SEL = _REFIT - _REFIT_CITY.downstream()  # the cross-city models upstream of every per-city asset

global_refit_job = dg.define_asset_job(
    "global_refit_job",
    selection=_START_SEL,
    description="Start a refit: retrain the cross-city models (the reward model and the G-DPO encoder). "
                "The refit chain sensor then rebuilds everything that depends on them, stage by stage: every "
                "city's embeddings, a new SID codebook version, every city's SIDs, the evaluations and the "
                "serving cache. Training runs are limited to one at a time.",
    tags={"lgsid/kind": "training", "lgsid/refit_start": "1"},
)
refit_global_stage_job = dg.define_asset_job(
    "refit_global_stage_job",
    selection=_REFIT - _START_SEL - _REFIT_CITY,
    description="A cross-city stage of a refit (launched by the refit chain sensor).",
    tags={"lgsid/kind": "training"},
)
refit_city_stage_job = dg.define_asset_job(
    "refit_city_stage_job",
    selection=_REFIT_CITY,
    description="A batch of cities' share of a per-city refit stage (launched by the refit chain sensor).",
    tags={"lgsid/kind": "city"},
)

_FAILED = {"FAILURE", "CANCELED", "CANCELING"}


def advance_refit(plan, start: int, runs: list[tuple[int, str, str | None]], cities: list[str]):
    """Pure chain logic: what to do next for one refit.

    ``runs`` are the refit's follow-up runs as (stage, status name, partition key, list of
    partition keys for a batch, or None);
    stages ``< start`` were done by the starting run. Returns one of
    ``("request", stage, [partition keys or None])``, ``("wait", stage)``, ``("failed", stage)``,
    ``("done", None)``. A per-city stage with no cities is skipped.
    """
    def expected(stage: int) -> list:
        return list(cities) if plan[stage][0] else [None]

    stage = max([s for s, _, _ in runs], default=start - 1)
    if stage >= start:
        mine = [(status, part) for s, status, part in runs if s == stage]
        if any(status in _FAILED for status, _ in mine):
            return ("failed", stage)
        if any(status != "SUCCESS" for status, _ in mine):
            return ("wait", stage)
        # a run covers one partition, a batch of them (a list), or none (a cross-city stage)
        covered = {p for _, part in mine for p in (part if isinstance(part, list) else [part])}
        missing = [p for p in expected(stage) if p not in covered]
        if missing:
            return ("request", stage, missing)
    nxt = stage + 1
    while nxt < len(plan) and not expected(nxt):
        nxt += 1
    if nxt >= len(plan):
        return ("done", None)
    return ("request", nxt, expected(nxt))


@dg.sensor(jobs=[refit_global_stage_job, refit_city_stage_job], minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Advances each refit started by global_refit_job (from the UI or the weekly refit "
                       "schedule): launches the next stage once every run of the previous one succeeded, "
                       "and stops the chain at a failed stage.")
def refit_chain_sensor(context: dg.SensorEvaluationContext):
    done = set(json.loads(context.cursor)["done"]) if context.cursor else set()
    plan = refit_plan(context.repository_def.asset_graph)
    start = leading_global_stages(plan)
    newest = context.instance.get_run_records(
        dg.RunsFilter(job_name=global_refit_job.name, statuses=[dg.DagsterRunStatus.SUCCESS],
                      tags={"lgsid/refit_start": "1"}), limit=1)
    order = list(context.instance.get_dynamic_partitions(city_partitions.name))
    cities = sorted(order)
    requests, notes = [], []
    # only the newest refit advances: a newer start supersedes an older, unfinished chain
    for rec in newest:
        rid = rec.dagster_run.run_id
        if rid in done:
            continue
        follow = context.instance.get_run_records(dg.RunsFilter(tags={"lgsid/refit": rid}))
        runs = [(int(r.dagster_run.tags["lgsid/refit_stage"]), r.dagster_run.status.value,
                 tags_cities(r.dagster_run.tags, order)) for r in follow]
        action = advance_refit(plan, start, runs, cities)
        if action[0] in ("done", "failed"):
            done.add(rid)
            notes.append(f"refit {rid[:8]}: " + ("complete" if action[0] == "done" else
                                                f"stopped, a run of stage {action[1] + 1} failed"))
            continue
        if action[0] == "wait":
            notes.append(f"refit {rid[:8]}: waiting on stage {action[1] + 1}/{len(plan)}")
            continue
        _, stage, parts = action
        is_city, keys = plan[stage]
        job = refit_city_stage_job if is_city else refit_global_stage_job
        batches = city_batches(parts, order) if is_city else [None]  # one run per batch of cities
        for batch in batches:
            args = batch_request_args(batch) if batch else {}
            label = "all" if batch is None else batch[0] if len(batch) == 1 else f"{batch[0]}..{batch[-1]}"
            requests.append(dg.RunRequest(
                job_name=job.name, asset_selection=list(keys), partition_key=args.get("partition_key"),
                run_key=f"refit:{rid}:{stage}:{label}", run_config=stage_run_config(keys),
                tags={"lgsid/refit": rid, "lgsid/refit_stage": str(stage), "lgsid/trigger": "refit-chain",
                      **args.get("tags", {})}))
        notes.append(f"refit {rid[:8]}: stage {stage + 1}/{len(plan)} "
                     f"({', '.join(k.to_user_string() for k in keys)}) for {len(parts) if is_city else 1} "
                     f"partition(s) in {len(batches)} run(s)")
    cursor = json.dumps({"done": sorted(done)})
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "no refit in progress", cursor=cursor)
    for n in notes:
        context.log.info(n)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


@dg.schedule(job=global_refit_job, cron_schedule="0 4 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every Monday 04:00 UTC (after the 02:00 city refresh): start a refit of the trained "
                         "models; the refit chain sensor rebuilds their dependants.")
def weekly_refit_schedule(context: dg.ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"weekly-refit:{stamp}", tags={"lgsid/trigger": "weekly-schedule"})
