"""Users and histories: per-block user attributes (home, taste, trip, history length), the
step-by-step click simulation of a block, and the ``users`` / ``INTERACTION_SCHEMA`` frames."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from lgsid_pipeline import schema
from lgsid_pipeline.world.config import WorldConfig
from lgsid_pipeline.world.geography import _CityGeo
from lgsid_pipeline.world.items import _ItemState
from lgsid_pipeline.world.spatial import _GROUP_GAP_KM
from lgsid_pipeline.world.vocab import _utf8

_US_PER_S = 1_000_000


@dataclass
class _Users:
    """Per-user attributes of one block of users (row i = user ``first + i``)."""

    first: int
    home_city: np.ndarray
    home_xy: np.ndarray
    length: np.ndarray
    taste: np.ndarray  # (n, n_cat2), rows sum to 1
    trip_city: np.ndarray  # -1 when the user does not travel
    trip_start: np.ndarray
    trip_end: np.ndarray
    hotel_xy: np.ndarray
    t0_s: np.ndarray  # first click, seconds after config.start


def _near_random_item(state: _ItemState, cities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point ~0.8 km around a uniformly drawn item of each row's city (people live where
    the shops are)."""
    out = np.zeros((len(cities), 2))
    for c, members in enumerate(state.city_items):  # per-city loop
        rows = np.flatnonzero(cities == c)
        if len(rows) and len(members):
            out[rows] = state.xy[members[rng.integers(0, len(members), size=len(rows))]]
    return out + 0.8 * rng.standard_normal((len(cities), 2))


def _user_block(cfg: WorldConfig, state: _ItemState, b: int) -> _Users:
    first = b * cfg.user_block
    n = min(cfg.user_block, cfg.n_users - first)
    rng = np.random.default_rng([cfg.seed, 4, b])
    n_cities = len(state.city_items)
    city_share = np.array([len(m) for m in state.city_items], dtype=np.float64)
    city_share /= city_share.sum()
    home = rng.choice(n_cities, size=n, p=city_share)
    home_xy = _near_random_item(state, home, rng)
    extra = cfg.mean_history - cfg.min_history
    if extra > 0:
        r = 2.0
        length = cfg.min_history + rng.negative_binomial(r, r / (r + extra), size=n)
    else:
        length = np.full(n, cfg.min_history)
    max_len = int(max(cfg.min_history + 1, math.ceil(8 * cfg.mean_history)))
    length = np.minimum(length, max_len).astype(np.int64)
    prior = np.bincount(state.cat2, minlength=state.n_cat2).astype(np.float64) + 0.5
    prior /= prior.sum()
    taste = rng.gamma(cfg.taste_concentration * prior, size=(n, state.n_cat2)) + 1e-12
    taste /= taste.sum(axis=1, keepdims=True)
    trip_city = np.full(n, -1, dtype=np.int64)
    travels = (rng.random(n) < cfg.traveller_share) & (length >= 4) & (n_cities >= 2)
    if n_cities >= 2:
        offset = 1 + rng.choice(n_cities - 1, size=n)  # another city, uniformly
        trip_city = np.where(travels, (home + offset) % n_cities, -1)
    trip_start = 1 + (rng.random(n) * np.maximum(length - 2, 1)).astype(np.int64)
    trip_end = np.minimum(trip_start + 2 + rng.poisson(3.0, size=n), length)
    hotel_xy = _near_random_item(state, np.maximum(trip_city, 0), rng)
    t0_s = rng.random(n) * 30 * 86_400.0
    return _Users(first, home, home_xy, length, taste, trip_city, trip_start, trip_end, hotel_xy, t0_s)


@dataclass
class _Step:
    """One simulation step for the ``m`` users still active (a prefix of the sorted block)."""

    t: int
    city: np.ndarray  # current city of each active user
    new: np.ndarray  # a session starts at this click
    on_trip: np.ndarray
    anchor: np.ndarray  # (m, 2) km: home / hotel at a session start, else the previous item
    u_rev: np.ndarray  # uniform draw: revisit at a session start, browse inside a session
    u_brand: np.ndarray  # uniform draw: chain repeat
    u_dir: np.ndarray  # uniform draw: direction of the destination point
    u_r: np.ndarray  # uniform draw: which earlier item a revisit picks


def _session_start_picks(cfg: WorldConfig, state: _ItemState, step: _Step, hist: np.ndarray,
                         prev: np.ndarray, fav: np.ndarray) -> np.ndarray:
    """Item rows chosen at session starts by a revisit or a chain repeat (-1: not chosen)."""
    t, city, new, m = step.t, step.city, step.new, len(step.city)
    choice = np.full(m, -1, dtype=np.int64)
    # Session start: revisit an earlier (not the last) item of the history.
    if t >= 2:
        rv = new & ~step.on_trip & (step.u_rev < cfg.revisit_prob)
        cand = hist[np.arange(m), np.minimum((step.u_r * (t - 1)).astype(np.int64), t - 2)]
        ok = rv & (state.city[cand] == city) & (cand != prev[:m])
        choice[ok] = cand[ok]
    # Session start: the nearest outlet of the user's last chain.
    if state.brand_tree is not None:
        br = np.flatnonzero(new & (choice < 0) & (fav[:m] >= 0) & (step.u_brand < cfg.brand_repeat_prob))
        if len(br):
            want = city[br] * state.n_brands + fav[br]
            _, ii = state.brand_tree.query(np.column_stack([step.anchor[br], want * _GROUP_GAP_KM]), k=1)
            ok = (state.brand_group_of[ii] == want) & (state.chain_rows[ii] != prev[br])
            choice[br[ok]] = state.chain_rows[ii[ok]]
    return choice


def _destination_picks(cfg: WorldConfig, state: _ItemState, step: _Step, rest: np.ndarray, prev: np.ndarray,
                       taste: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item rows for the active users ``rest`` via a destination point and weighted candidates."""
    city, new, k = step.city, step.new, cfg.candidates_k
    scale = np.where(new[rest], cfg.home_scale_km, cfg.session_scale_km)
    r = rng.gamma(2.0, scale)  # radial law of the 2-D density exp(-d / scale)
    theta = 2.0 * np.pi * step.u_dir[rest]
    target = step.anchor[rest] + r[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
    cand = state.by_city.candidates(city[rest], target, k, rng)
    prev_r = prev[rest]
    # Browsing: inside a session, compare shops of the previous item's cat2 nearby.
    browse = np.flatnonzero(~new[rest] & (prev_r >= 0) & (step.u_rev[rest] < cfg.browse_prob))
    if len(browse):
        group = city[rest[browse]] * state.n_cat2 + state.cat2[prev_r[browse]]
        alt = state.by_category.candidates(group, target[browse], k, rng)
        useful = (alt != prev_r[browse, None]).any(axis=1)  # else keep the cell's items
        cand[browse[useful]] = alt[useful]
    valid = cand != prev_r[:, None]
    cand_cat = state.cat2[cand]
    logw = state.logpop[cand] + np.log(taste[rest[:, None], cand_cat])
    stay = ~new[rest] & (prev_r >= 0)
    same = stay[:, None] & (cand_cat == state.cat2[np.maximum(prev_r, 0)][:, None])
    logw = logw + np.where(same, math.log(cfg.same_cat2_boost), 0.0)
    score = np.where(valid, logw + rng.gumbel(size=cand.shape), -np.inf)
    pick = cand[np.arange(len(rest)), np.argmax(score, axis=1)]
    none = np.flatnonzero(~valid.any(axis=1))  # only the previous item was drawn
    if len(none):
        near = state.by_city.nearest(city[rest[none]], target[none])
        other = near != prev_r[none, None]
        first = np.argmax(other, axis=1)  # nearest other item (else the previous one)
        pick[none] = near[np.arange(len(none)), first]
    return pick


def _simulate(cfg: WorldConfig, state: _ItemState, users: _Users, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Click matrix (n_users, max_len) of item rows and times (s), users in block order."""
    rng = np.random.default_rng([cfg.seed, 5, b])
    order = np.argsort(-users.length, kind="stable")  # active users form a prefix at each step
    length = users.length[order]
    home, home_xy = users.home_city[order], users.home_xy[order]
    taste = users.taste[order]
    trip_city, trip_start, trip_end = users.trip_city[order], users.trip_start[order], users.trip_end[order]
    hotel_xy = users.hotel_xy[order]
    n, max_len = len(length), int(length.max()) if len(length) else 0
    hist = np.zeros((n, max_len), dtype=np.int64)
    times = np.zeros((n, max_len))
    prev = np.full(n, -1, dtype=np.int64)
    prev_city = np.full(n, -1, dtype=np.int64)
    prev_xy = np.zeros((n, 2))
    fav = np.full(n, -1, dtype=np.int64)
    clock = users.t0_s[order].copy()
    n_active = np.searchsorted(-length, -np.arange(max_len), side="right")  # users with length > t

    for t in range(max_len):
        m = int(n_active[t])
        on_trip = (trip_city[:m] >= 0) & (t >= trip_start[:m]) & (t < trip_end[:m])
        city = np.where(on_trip, trip_city[:m], home[:m])
        new = (rng.random(m) < cfg.new_session_prob) | (city != prev_city[:m])
        start_xy = np.where(on_trip[:, None], hotel_xy[:m], home_xy[:m])
        anchor = np.where(new[:, None], start_xy, prev_xy[:m])
        u_rev, u_brand, u_dir, u_r = rng.random((4, m))
        step = _Step(t, city, new, on_trip, anchor, u_rev, u_brand, u_dir, u_r)
        choice = _session_start_picks(cfg, state, step, hist, prev, fav)
        # Otherwise: a destination point; K items drawn from its grid cell (or the city's item
        # nearest to it when the cell is empty), one picked with probability
        # ~ popularity x taste(cat2) x (same_cat2_boost if it has the session's cat2).
        rest = np.flatnonzero(choice < 0)
        if len(rest):
            choice[rest] = _destination_picks(cfg, state, step, rest, prev, taste, rng)

        gap = np.where(new, 3_600.0 + rng.exponential(2.5 * 86_400.0, size=m),
                       60.0 + rng.exponential(20 * 60.0, size=m))
        if t > 0:
            clock[:m] += gap
        hist[:m, t] = choice
        times[:m, t] = clock[:m]
        prev[:m], prev_city[:m], prev_xy[:m] = choice, city, state.xy[choice]
        fav[:m] = np.where(state.brand[choice] >= 0, state.brand[choice], fav[:m])

    inv = np.argsort(order, kind="stable")
    return hist[inv], times[inv]


def _interaction_frame(cfg: WorldConfig, state: _ItemState, users: _Users, hist: np.ndarray,
                       times: np.ndarray) -> pl.DataFrame:
    mask = np.arange(hist.shape[1])[None, :] < users.length[:, None]
    width = max(6, len(str(cfg.n_users - 1)))
    user_idx = np.repeat(users.first + np.arange(len(users.length)), users.length)
    seq = (np.cumsum(mask, axis=1) - 1)[mask]
    base_us = np.datetime64(cfg.start, "us").astype(np.int64)
    ts = base_us + np.round(times[mask] * _US_PER_S).astype(np.int64)
    df = pl.DataFrame({
        "user_id": ("u" + pl.Series(user_idx).cast(pl.Utf8).str.zfill(width)),
        "item_id": state.item_ids.gather(hist[mask]),
        "timestamp": pl.Series(ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "seq_idx": seq.astype(np.int64),
    })
    return schema.conform(df, schema.INTERACTION_SCHEMA)


def _users_frame(cfg: WorldConfig, geos: list[_CityGeo], blocks: list[_Users]) -> pl.DataFrame:
    width = max(6, len(str(cfg.n_users - 1)))
    names = np.array([g.name for g in geos] + [None], dtype=object)
    states = np.array([g.state for g in geos] + [None], dtype=object)
    frames = []
    for u in blocks:
        lat = np.empty(len(u.length))
        lon = np.empty(len(u.length))
        for c, geo in enumerate(geos):
            rows = np.flatnonzero(u.home_city == c)
            lat[rows], lon[rows] = geo.to_latlon(u.home_xy[rows])
        frames.append(pl.DataFrame({
            "user_id": "u" + pl.Series(u.first + np.arange(len(u.length))).cast(pl.Utf8).str.zfill(width),
            "home_city": _utf8(names[u.home_city]),
            "home_province": _utf8(states[u.home_city]),
            "home_lat": lat,
            "home_lon": lon,
            "trip_city": _utf8(names[u.trip_city]),  # -1 -> None
            "trip_province": _utf8(states[u.trip_city]),
            "n_interactions": u.length,
        }))
    return pl.concat(frames) if frames else pl.DataFrame()
