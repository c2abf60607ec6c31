"""Synthetic catalogues for tokenizer tests and benchmarks: a Gaussian-mixture embedding
(topics x sub-topics, carrying no geography) and clustered synthetic geography
(cities -> towns, with province / city / town / category / brand columns)."""

from __future__ import annotations

import numpy as np
import polars as pl


def clustered_catalog(
    n: int = 360,
    d: int = 32,
    seed: int = 0,
    n_cities: int = 4,
    n_topics: int = 6,
    n_subtopics: int = 3,
    towns_per_city: int = 3,
    noise: float = 0.3,
) -> tuple[np.ndarray, pl.DataFrame]:
    """``(X float32 (n, d), items)``; cities sit 2 degrees apart, towns 0.05 degrees apart."""
    rng = np.random.default_rng(seed)
    city = rng.integers(0, n_cities, n)
    town = rng.integers(0, towns_per_city, n)
    grid = np.arange(n_cities, dtype=np.float64)
    lat = 30 + 2.0 * (grid % 8)[city] + 0.05 * town + rng.normal(0, 0.01, n)
    lon = 100 + 2.0 * (grid // 8)[city] + 0.05 * town + rng.normal(0, 0.01, n)
    topic = rng.integers(0, n_topics, n)
    sub = rng.integers(0, n_subtopics, n)
    means = rng.normal(0, 3.0, (n_topics, d)).astype(np.float32)
    sub_means = rng.normal(0, 1.0, (n_topics, n_subtopics, d)).astype(np.float32)
    X = means[topic] + sub_means[topic, sub] + rng.normal(0, noise, (n, d)).astype(np.float32)
    brand = rng.integers(0, 4 * n_topics, n)
    base = pl.DataFrame({"i": np.arange(n), "city_n": city, "town_n": town, "topic": topic, "sub": sub, "b": brand})
    items = base.select(
        ("i" + pl.col("i").cast(pl.Utf8)).alias("item_id"),
        ("P" + (pl.col("city_n") // 2).cast(pl.Utf8)).alias("province"),
        ("C" + pl.col("city_n").cast(pl.Utf8)).alias("city"),
        pl.lit(None, dtype=pl.Utf8).alias("district"),
        ("C" + pl.col("city_n").cast(pl.Utf8) + "-T" + pl.col("town_n").cast(pl.Utf8)).alias("town"),
        pl.Series("lat", lat),
        pl.Series("lon", lon),
        ("topic" + pl.col("topic").cast(pl.Utf8)).alias("cat1"),
        ("topic" + pl.col("topic").cast(pl.Utf8) + "/" + pl.col("sub").cast(pl.Utf8)).alias("cat2"),
        pl.lit(None, dtype=pl.Utf8).alias("cat3"),
        pl.when(pl.col("b") < n_topics).then("b" + pl.col("b").cast(pl.Utf8)).otherwise(None).alias("brand"),
        ("c" + pl.col("city_n").cast(pl.Utf8)).alias("city_key"),
    )
    return np.ascontiguousarray(X, dtype=np.float32), items
