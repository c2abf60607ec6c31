"""The ``city`` dynamic partitions: one partition per sanitised city key."""

import dagster as dg

city_partitions = dg.DynamicPartitionsDefinition(name="city")

DELTA = {"partition_expr": "city_key"}
"""Metadata for per-city Delta outputs: the IO manager overwrites only this city's rows."""
