"""Refit correctness, counted for the reliability summary: a refit rebuilds every asset that
depends on a refitted model, each after all of its parents, and nothing else.

The expectation is computed from the asset graph itself (every descendant of the trained
models), independently of ``refit_plan``'s staging, so a dependant added later cannot be
missed silently.
"""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.definitions import build_defs
from orchestration.refit import refit_plan

TRAINED = ("reward_model",)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return build_defs(str(tmp_path_factory.mktemp("refit-correctness"))).resolve_asset_graph()


def _descendants(graph, roots) -> set[dg.AssetKey]:
    seen, todo = set(), [dg.AssetKey(r) for r in roots]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        todo.extend(graph.get(key).child_keys)
    return seen


def test_the_refit_rebuilds_every_dependant_after_its_parents(graph, figures):
    plan = refit_plan(graph)
    order = {key: i for i, (_, keys) in enumerate(plan) for key in keys}
    want = _descendants(graph, TRAINED)
    assert set(order) == want, f"missing {sorted(k.to_user_string() for k in want - set(order))}, " \
                               f"extra {sorted(k.to_user_string() for k in set(order) - want)}"
    for key in want:
        for parent in graph.get(key).parent_keys:
            if parent in order:
                assert order[parent] < order[key], f"{key.to_user_string()} runs before its parent " \
                                                   f"{parent.to_user_string()}"
                figures.add("refit dependencies ordered")
        is_city = plan[order[key]][0]
        assert is_city == (graph.get(key).partitions_def is not None), key.to_user_string()
    for name in ("item_embeddings", "sid_table", "recommender_evaluations"):  # the ones once skipped
        assert dg.AssetKey(name) in order
    figures.add("refit plans checked")
