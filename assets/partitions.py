"""The ``city`` dynamic partitions: one partition per sanitised city key.

Per-city assets materialize a *batch* of cities per run (a partition-key range, at most
``CITY_BATCH`` cities): the run's fixed cost is paid once per batch, not once per city. Each
asset loops over ``context.partition_keys``, writes one Delta commit that replaces exactly the
batch's partitions (``partition_expr``), and records metadata per partition.
"""

import warnings

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lgsid_pipeline.partitions import CITY_BATCH, city_batches, validate_city_key

city_partitions = dg.DynamicPartitionsDefinition(name="city")

DELTA = {"partition_expr": "city_key"}
"""Metadata for per-city Delta outputs: the IO manager overwrites only this run's cities' rows."""

# BackfillPolicy on @asset is marked beta in Dagster 1.13; it is the documented way to batch
# partitions per run, so its warning is not repeated for every per-city asset.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
CITY_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=CITY_BATCH)
"""UI backfills of per-city assets: one run per batch of cities."""

# Concurrency pools (Dagster's op-level limits across all runs). Every pool's limit is 1: the
# instance's ``concurrency.pools.default_limit`` (dagster.yaml, the deploy configs and the homes
# ``lgsid materialize`` creates all set it).
TRAINING_POOL = "lgsid_training"
"""The cross-city trainers and fitters (reward model, G-DPO, codebook, evaluations): one at a
time, since each rewrites shared model artefacts and saturates the machine."""
ENCODER_POOL = "lgsid_encoder"
"""Per-city encoding (item_embeddings): one city on the encoder device at a time."""
POOL_LIMIT = 1


def run_cities(context: dg.AssetExecutionContext) -> list[str]:
    """The validated city keys this run materializes (one, or a batch)."""
    return [validate_city_key(k) for k in context.partition_keys]


def emit(context: dg.AssetExecutionContext, value, per_city: dict[str, dict], common: dict | None = None,
         output_name: str | None = None) -> dg.Output:
    """The batch's output with metadata per partition: a one-city run keeps it on the Output
    (as before batching), a batch adds each city's metadata to its own partition."""
    common = dict(common or {})
    if len(per_city) == 1:
        (meta,) = per_city.values()
        return dg.Output(value, output_name=output_name or "result", metadata={**common, **meta})
    key = dg.AssetKey(output_name) if output_name else None
    for city, meta in per_city.items():
        context.add_asset_metadata({**common, **meta}, asset_key=key, partition_key=city)
    return dg.Output(value, output_name=output_name or "result")


def range_tags(batch: list[str]) -> dict[str, str]:
    """Run tags that make a run materialize the partition range ``batch[0]..batch[-1]``."""
    return {ASSET_PARTITION_RANGE_START_TAG: batch[0], ASSET_PARTITION_RANGE_END_TAG: batch[-1]}


def batch_request_args(batch: list[str]) -> dict:
    """``RunRequest`` / ``materialize`` arguments for one batch: a partition key for one city,
    range tags for several."""
    return {"partition_key": batch[0]} if len(batch) == 1 else {"tags": range_tags(batch)}


def tags_cities(tags, order: list[str]) -> list[str] | None:
    """The city keys run tags target: the one partition, the range ``start..end`` in ``order``
    (the instance's partition order), or None (an unpartitioned run, or a range whose ends are
    not partitions)."""
    tags = tags or {}
    if tags.get("dagster/partition"):
        return [tags["dagster/partition"]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not start or not end or start not in order or end not in order:
        return None
    return keys_in_range(order, start, end)


def run_partition_keys(context) -> list[str] | None:
    """The city keys of the run a check looks at (see ``tags_cities``)."""
    return tags_cities(context.run.tags, list(context.instance.get_dynamic_partitions(city_partitions.name)))


def keys_in_range(order: list[str], start: str, end: str) -> list[str]:
    i, j = order.index(start), order.index(end)
    return list(order[i:j + 1])


def batches_for(instance: dg.DagsterInstance, cities: list[str], batch_size: int | None = None) -> list[list[str]]:
    """``cities`` as batches of at most ``batch_size`` (default ``CITY_BATCH``) contiguous
    partitions (see ``city_batches``)."""
    return city_batches(cities, list(instance.get_dynamic_partitions(city_partitions.name)),
                        batch_size or CITY_BATCH)


def request_cities(request: dg.RunRequest, order: list[str]) -> list[str]:
    """The city keys a run request targets: its partition key, or its range in ``order``."""
    if request.partition_key:
        return [request.partition_key]
    return tags_cities(request.tags, order) or []


def result_cities(result, instance: dg.DagsterInstance) -> list[str]:
    """Every city key a sensor result's run requests target, sorted (the instance's partitions
    plus the ones the result adds)."""
    order = list(instance.get_dynamic_partitions(city_partitions.name))
    for req in getattr(result, "dynamic_partitions_requests", None) or []:
        order += [k for k in req.partition_keys if k not in order]
    return sorted(c for r in result.run_requests for c in request_cities(r, order))
