"""The ``city`` dynamic partitions: one partition per sanitised city key."""

import dagster as dg

city_partitions = dg.DynamicPartitionsDefinition(name="city")

DELTA = {"partition_expr": "city_key"}
"""Metadata for per-city Delta outputs: the IO manager overwrites only this city's rows."""

# Concurrency pools (Dagster's op-level limits across all runs). Every pool's limit is 1: the
# instance's ``concurrency.pools.default_limit`` (dagster.yaml, the deploy configs and the homes
# ``lgsid materialize`` creates all set it).
TRAINING_POOL = "lgsid_training"
"""The cross-city trainers and fitters (reward model, G-DPO, codebook, evaluations): one at a
time, since each rewrites shared model artefacts and saturates the machine."""
ENCODER_POOL = "lgsid_encoder"
"""Per-city encoding (item_embeddings): one city on the encoder device at a time."""
POOL_LIMIT = 1
