"""The refit lifecycle: its stage plan, the chain sensor's logic and the vanished-metric check."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START

from lgsid_pipeline.recommenders.stats import metric_regressions
from orchestration.definitions import build_defs
from orchestration.refit import (advance_refit, leading_global_stages, refit_chain_sensor, refit_plan,
                                 weekly_refit_schedule)


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    return build_defs(str(tmp_path_factory.mktemp("refit-home")))


def _names(keys):
    return sorted(k.to_user_string() for k in keys)


def test_refit_plan_rebuilds_every_dependant_in_order(defs):
    plan = refit_plan(defs.resolve_asset_graph())
    got = [(is_city, _names(keys)) for is_city, keys in plan]
    assert got == [
        (False, ["reward_model"]), (False, ["aligned_encoder"]), (True, ["item_embeddings"]),
        (False, ["alignment_report", "sid_codebook"]), (True, ["sid_table"]), (False, ["recommender_evaluations"]),
        (True, ["user_topk_cache"]),
    ]
    assert leading_global_stages(plan) == 2
    start = defs.resolve_job_def("global_refit_job")
    assert _names(start.asset_layer.selected_asset_keys) == ["aligned_encoder", "reward_model"]
    stage_global = defs.resolve_job_def("refit_global_stage_job")
    assert _names(stage_global.asset_layer.selected_asset_keys) == ["alignment_report", "recommender_evaluations",
                                                                    "sid_codebook"]
    stage_city = defs.resolve_job_def("refit_city_stage_job")
    assert _names(stage_city.asset_layer.selected_asset_keys) == ["item_embeddings", "sid_table", "user_topk_cache"]


PLAN = [(False, ["a"]), (False, ["b"]), (True, ["c"]), (False, ["d"]), (True, ["e"])]


def test_advance_refit_walks_the_stages_and_stops_on_failure():
    cities = ["x", "y"]
    assert advance_refit(PLAN, 2, [], cities) == ("request", 2, ["x", "y"])
    assert advance_refit(PLAN, 2, [(2, "STARTED", "x"), (2, "SUCCESS", "y")], cities) == ("wait", 2)
    assert advance_refit(PLAN, 2, [(2, "SUCCESS", "x")], cities) == ("request", 2, ["y"])  # a lost request
    ok2 = [(2, "SUCCESS", "x"), (2, "SUCCESS", "y")]
    assert advance_refit(PLAN, 2, ok2, cities) == ("request", 3, [None])
    assert advance_refit(PLAN, 2, [*ok2, (3, "FAILURE", None)], cities) == ("failed", 3)
    assert advance_refit(PLAN, 2, [*ok2, (3, "CANCELED", None)], cities) == ("failed", 3)
    ok3 = [*ok2, (3, "SUCCESS", None)]
    assert advance_refit(PLAN, 2, ok3, cities) == ("request", 4, ["x", "y"])
    assert advance_refit(PLAN, 2, [*ok3, (4, "SUCCESS", "x"), (4, "SUCCESS", "y")], cities) == ("done", None)
    # a batch run covers a list of cities
    assert advance_refit(PLAN, 2, [(2, "SUCCESS", ["x", "y"])], cities) == ("request", 3, [None])
    assert advance_refit(PLAN, 2, [(2, "SUCCESS", ["x"])], cities) == ("request", 2, ["y"])
    # no cities: per-city stages are skipped, the cross-city ones still run
    assert advance_refit(PLAN, 2, [], []) == ("request", 3, [None])
    assert advance_refit(PLAN, 2, [(3, "SUCCESS", None)], []) == ("done", None)


def _add_run(instance, job, status, tags, partition=None):
    run = DagsterRun(job_name=job, status=status, tags={**tags, **({"dagster/partition": partition} if partition else {})})
    instance.add_run(run)
    return run.run_id


def test_chain_sensor_requests_the_next_stage_per_city_and_stops_on_failure(defs):
    repo = defs.get_repository_def()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("city", ["portland", "tacoma"])
        ctx = dg.build_sensor_context(instance=instance, repository_def=repo)
        res = refit_chain_sensor(ctx)
        assert not res.run_requests and "no refit" in res.skip_reason.skip_message
        # an old run without the start tag (before this chain existed) is never continued
        _add_run(instance, "global_refit_job", DagsterRunStatus.SUCCESS, {})
        assert not refit_chain_sensor(dg.build_sensor_context(instance=instance, repository_def=repo)).run_requests
        rid = _add_run(instance, "global_refit_job", DagsterRunStatus.SUCCESS, {"lgsid/refit_start": "1"})
        res = refit_chain_sensor(dg.build_sensor_context(instance=instance, repository_def=repo))
        reqs = res.run_requests
        (batch,) = reqs  # both cities in one batch run (a partition range), not a run per city
        assert batch.partition_key is None
        assert (batch.tags[RANGE_START], batch.tags[RANGE_END]) == ("portland", "tacoma")
        assert all(r.job_name == "refit_city_stage_job" and _names(r.asset_selection) == ["item_embeddings"]
                   and r.tags["lgsid/refit"] == rid and r.tags["lgsid/refit_stage"] == "2" for r in reqs)
        # while the batch runs, the chain waits; a success of the range covers both cities
        _add_run(instance, "refit_city_stage_job", DagsterRunStatus.SUCCESS,
                 {"lgsid/refit": rid, "lgsid/refit_stage": "2", RANGE_START: "portland", RANGE_END: "tacoma"})
        res = refit_chain_sensor(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=res.cursor))
        (req,) = res.run_requests
        assert req.job_name == "refit_global_stage_job" and req.partition_key is None
        assert _names(req.asset_selection) == ["alignment_report", "sid_codebook"]
        assert req.run_config == {"ops": {"sid_codebook": {"config": {"refit": True}}}}  # a new version
        _add_run(instance, "refit_global_stage_job", DagsterRunStatus.FAILURE, {"lgsid/refit": rid, "lgsid/refit_stage": "3"})
        res = refit_chain_sensor(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=res.cursor))
        assert not res.run_requests and "stopped" in res.skip_reason.skip_message
        # once stopped, later ticks do nothing for that refit
        again = refit_chain_sensor(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=res.cursor))
        assert not again.run_requests


def test_weekly_refit_schedule_starts_the_chain():
    ctx = dg.build_schedule_context(scheduled_execution_time=__import__("datetime").datetime(2026, 12, 7, 4))
    req = weekly_refit_schedule(ctx)
    assert req.run_key == "weekly-refit:2026-12-07"


def test_metric_regressions_flag_drops_and_vanished_metrics():
    old = {"TIGER.lgsid.test_hit@10": 0.20, "TIGER.rqvae.test_hit@10": 0.18, "DIN.lgsid.auc": 0.70}
    new = {"TIGER.lgsid.test_hit@10": 0.15, "DIN.lgsid.auc": 0.69}
    drops, vanished = metric_regressions(new, old, 0.10)
    assert list(drops) == ["TIGER.lgsid.test_hit@10"]
    assert vanished == ["TIGER.rqvae.test_hit@10"]
    assert metric_regressions(old, old, 0.10) == ({}, [])


def test_trainers_and_the_encoder_share_limited_pools(defs):
    from assets.partitions import ENCODER_POOL, TRAINING_POOL
    from orchestration.cli import DAGSTER_YAML

    graph = defs.resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()
             if graph.get(k).is_materializable}
    for name in ("reward_model", "aligned_encoder", "sid_codebook", "recommender_evaluations"):
        assert pools[name] == {TRAINING_POOL}, name
    assert pools["item_embeddings"] == {ENCODER_POOL}
    assert "default_limit: 1" in DAGSTER_YAML  # homes made by `lgsid materialize` enforce them
