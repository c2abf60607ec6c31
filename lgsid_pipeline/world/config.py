"""World configuration: ``WorldConfig`` (size, cities and behaviour of a world), the named
``PRESETS`` and ``resolve_config``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lgsid_pipeline.world.gazetteer import CITIES, known_keys_hint, largest_us_cities

__all__ = ["PRESETS", "WorldConfig", "resolve_config"]

@dataclass(frozen=True)
class WorldConfig:
    """Size, cities and behaviour of a synthetic world. Same config + seed -> same world."""

    n_items: int
    n_users: int
    mean_history: float
    cities: tuple[str, ...]  # keys of CITY_CATALOG
    seed: int = 0
    # items
    chain_share: float = 0.30
    items_per_brand: float = 36.0  # Kuaishou: 2.3M items, 19k brands, ~30% branded
    town_radius_km: float = 35.0
    max_towns: int = 40
    district_null_rate: float = 0.03
    popularity_sigma: float = 1.0
    # users and histories
    min_history: int = 3
    traveller_share: float = 0.05
    taste_concentration: float = 2.0
    new_session_prob: float = 0.35
    browse_prob: float = 0.3
    same_cat2_boost: float = 8.0
    brand_repeat_prob: float = 0.25
    revisit_prob: float = 0.08
    home_scale_km: float = 3.0
    session_scale_km: float = 1.0
    candidates_k: int = 24
    cell_km: float = 0.5
    browse_cell_km: float = 2.0
    start: str = "2025-01-01T00:00:00"
    user_block: int = 100_000  # users simulated together; part of the world's identity

    def __post_init__(self) -> None:
        for name in ("n_items", "n_users", "candidates_k", "max_towns", "user_block"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.min_history < 1:
            raise ValueError(f"WorldConfig.min_history must be >= 1, got {self.min_history!r}")
        if not self.mean_history >= self.min_history:
            raise ValueError(
                f"WorldConfig.mean_history ({self.mean_history!r}) must be >= min_history "
                f"({self.min_history})"
            )
        if not self.cities:
            raise ValueError("WorldConfig.cities must name at least one city")
        if len(set(self.cities)) != len(self.cities):
            raise ValueError(f"WorldConfig.cities has duplicates: {self.cities!r}")
        if self.n_items < len(self.cities):
            raise ValueError(
                f"WorldConfig.n_items ({self.n_items}) must be >= the number of cities ({len(self.cities)})"
            )
        for key in self.cities:
            if key not in CITIES:
                raise ValueError(
                    f"WorldConfig.cities: unknown city key {key!r}; {known_keys_hint()}"
                )
        for name in ("chain_share", "district_null_rate", "traveller_share", "new_session_prob",
                     "browse_prob", "brand_repeat_prob", "revisit_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be within [0, 1], got {v!r}")
        for name in ("items_per_brand", "town_radius_km", "home_scale_km", "session_scale_km",
                     "taste_concentration", "same_cat2_boost", "cell_km", "browse_cell_km"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"WorldConfig.{name} must be > 0, got {v!r}")
        if self.popularity_sigma < 0:
            raise ValueError(f"WorldConfig.popularity_sigma must be >= 0, got {self.popularity_sigma!r}")
        try:
            np.datetime64(self.start, "us")
        except ValueError:
            raise ValueError(f"WorldConfig.start is not an ISO datetime: {self.start!r}") from None


_DEMO_CITIES = ("springfield-il", "springfield-ma", "portland-or", "portland-me")
_BENCH_CITIES = (
    "springfield-il", "springfield-ma", "springfield-mo", "portland-or", "portland-me",
    "kansas-city-mo", "kansas-city-ks", "new-york", "los-angeles", "chicago", "houston",
    "phoenix", "seattle",
)

PRESETS: dict[str, WorldConfig] = {
    "test": WorldConfig(n_items=300, n_users=80, mean_history=12.0,
                        cities=("springfield-il", "springfield-ma", "portland-or"), items_per_brand=12.0),
    "demo": WorldConfig(n_items=2_000, n_users=600, mean_history=25.0, cities=_DEMO_CITIES,
                        items_per_brand=12.0),
    # the shape of a real multi-city check-in set: ~8,000 venues over 150 cities, ~180k visits
    "cities-150": WorldConfig(n_items=8_000, n_users=6_000, mean_history=30.0,
                              cities=largest_us_cities(150), items_per_brand=12.0),
    "bench-100k": WorldConfig(n_items=100_000, n_users=50_000, mean_history=20.0,
                              cities=_BENCH_CITIES),
    "bench-1m": WorldConfig(n_items=1_000_000, n_users=500_000, mean_history=20.0,
                            cities=_BENCH_CITIES),
    "bench-2.3m": WorldConfig(n_items=2_300_000, n_users=1_150_000, mean_history=20.0,
                              cities=_BENCH_CITIES),
}
"""Named configs. ``cities-150``: the 150 largest US cities (``gazetteer.largest_us_cities``),
items shared by population. ``bench-*``: interactions ~= 10 x items (users = items / 2, 20 clicks each)."""


def resolve_config(config: WorldConfig | str, seed: int | None = None) -> WorldConfig:
    """A preset name or a config, with ``seed`` (when given) replacing ``config.seed``."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown world preset {config!r}; presets: {sorted(PRESETS)}")
        config = PRESETS[config]
    if not isinstance(config, WorldConfig):
        raise ValueError(f"config must be a WorldConfig or a preset name, got {type(config).__name__}")
    if seed is not None:
        config = replace(config, seed=int(seed))
    return config
