"""Words of the world: the category tree as arrays, goods menus and top sellers, and the
generated names of chains and independent shops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from lgsid_pipeline.world.categories import CAT2_WORDS, COMMON_WORDS, LEAVES

_MAX_GOODS = 9

_SURNAMES = (
    "Miller", "Johnson", "Garcia", "Nguyen", "Kim", "Patel", "Rossi", "Chen", "Walker", "Lopez",
    "Murphy", "Sullivan", "Park", "Wong", "Hughes", "Foster", "Bennett", "Reyes", "Tanaka",
    "Singh", "Carter", "Morgan", "Brooks", "Ramirez", "Li", "O'Brien", "Schmidt", "Dubois",
)
_BRAND_TAILS = ("Express", "Co.", "House", "Bros.", "Station", "Spot", "Hub", "Club", "Place")


def _utf8(values: np.ndarray) -> pl.Series:
    """A Utf8 series from an object array that may hold None (no Object-dtype inference)."""
    return pl.Series(values.tolist(), dtype=pl.Utf8)


@dataclass(frozen=True)
class _Tree:
    cat1: np.ndarray
    cat2: np.ndarray
    cat3: np.ndarray
    cat2_names: tuple[str, ...]
    leaf_cat2: np.ndarray  # leaf -> cat2 index
    weight: np.ndarray  # leaf share of independent items
    chain_weight: np.ndarray  # leaf share of chains
    price: np.ndarray
    goods_vocab: pl.Series  # index 0 is null
    goods_start: np.ndarray  # leaf -> first vocab index
    goods_len: np.ndarray


def _tree() -> _Tree:
    cat2_names = tuple(dict.fromkeys(leaf.cat2 for leaf in LEAVES))
    vocab: list[str | None] = [None]
    start, length = [], []
    for leaf in LEAVES:
        if not 5 <= len(leaf.goods) <= _MAX_GOODS + 3:
            raise ValueError(f"category leaf {leaf.cat3!r}: goods list must have 5-{_MAX_GOODS + 3} entries")
        start.append(len(vocab))
        length.append(len(leaf.goods))
        vocab.extend(leaf.goods)
    w = np.array([leaf.weight for leaf in LEAVES], dtype=np.float64)
    cw = w * np.array([leaf.chain for leaf in LEAVES])
    return _Tree(
        cat1=np.array([leaf.cat1 for leaf in LEAVES], dtype=object),
        cat2=np.array([leaf.cat2 for leaf in LEAVES], dtype=object),
        cat3=np.array([leaf.cat3 for leaf in LEAVES], dtype=object),
        cat2_names=cat2_names,
        leaf_cat2=np.array([cat2_names.index(leaf.cat2) for leaf in LEAVES], dtype=np.int64),
        weight=w / w.sum(), chain_weight=cw / cw.sum(),
        price=np.array([leaf.price for leaf in LEAVES], dtype=np.float64),
        goods_vocab=pl.Series("goods", vocab, dtype=pl.Utf8),
        goods_start=np.array(start, dtype=np.int64), goods_len=np.array(length, dtype=np.int64),
    )


def _pick_goods(leaf: np.ndarray, tree: _Tree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per row: up to ``_MAX_GOODS`` distinct goods of its leaf (vocab indices, 0 = none),
    and how many of them (from the front) are top sellers."""
    n = len(leaf)
    ln = tree.goods_len[leaf]
    keys = rng.random((n, _MAX_GOODS + 3))
    keys[np.arange(_MAX_GOODS + 3)[None, :] >= ln[:, None]] = 2.0  # slots past the leaf's list
    order = np.argsort(keys, axis=1, kind="stable")[:, :_MAX_GOODS]
    k = rng.integers(5, np.minimum(ln, _MAX_GOODS) + 1)
    idx = tree.goods_start[leaf, None] + order
    idx[np.arange(_MAX_GOODS)[None, :] >= k[:, None]] = 0
    n_top = rng.integers(2, 4, size=n)
    return idx, n_top


def _join_goods(idx: np.ndarray, n_top: np.ndarray, vocab: pl.Series) -> tuple[pl.Series, pl.Series]:
    cols = {f"g{j}": vocab.gather(idx[:, j]) for j in range(idx.shape[1])}
    frame = pl.DataFrame(cols).with_columns(pl.Series("n_top", n_top))
    goods = frame.select(pl.concat_str(list(cols), separator=", ", ignore_nulls=True).alias("goods"))
    top = frame.select(
        pl.concat_str(
            [pl.when(pl.col("n_top") > j).then(pl.col(f"g{j}")) for j in range(3)],
            separator=", ", ignore_nulls=True,
        ).alias("top_sellers")
    )
    return goods["goods"], top["top_sellers"]


def _choose_words(rng: np.random.Generator, pools: list[tuple[str, ...]], which: np.ndarray) -> np.ndarray:
    """For each row, a uniform word from ``pools[which[row]]`` (loops over pools, not rows)."""
    out = np.empty(len(which), dtype=object)
    for p, pool in enumerate(pools):
        rows = np.flatnonzero(which == p)
        if len(rows):
            out[rows] = np.array(pool, dtype=object)[rng.integers(0, len(pool), size=len(rows))]
    return out


def _brand_names(n: int, leaf: np.ndarray, tree: _Tree, rng: np.random.Generator) -> np.ndarray:
    """Unique chain names flavoured by their category ("Golden Dragon Express", "Kim's Ramen")."""
    cat2 = tree.leaf_cat2[leaf]
    pools_a = [COMMON_WORDS + CAT2_WORDS[c] for c in tree.cat2_names]
    pools_b = [CAT2_WORDS[c] for c in tree.cat2_names]
    a = _choose_words(rng, pools_a, cat2)
    b = _choose_words(rng, pools_b, cat2)
    tail = np.array(_BRAND_TAILS, dtype=object)[rng.integers(0, len(_BRAND_TAILS), size=n)]
    surname = np.array(_SURNAMES, dtype=object)[rng.integers(0, len(_SURNAMES), size=n)]
    suffix = _choose_words(rng, [LEAVES[i].suffixes for i in range(len(LEAVES))], leaf)
    style = rng.random(n)
    df = pl.DataFrame({"a": _utf8(a), "b": _utf8(b), "tail": _utf8(tail), "sur": _utf8(surname),
                       "suf": _utf8(suffix), "style": style})
    name = (
        pl.when(pl.col("style") < 0.55).then(pl.concat_str(["a", "b", "tail"], separator=" "))
        .when(pl.col("style") < 0.8).then(pl.concat_str([pl.col("sur") + "'s", pl.col("suf")], separator=" "))
        .otherwise(pl.concat_str(["b", "suf", "tail"], separator=" "))
    )
    df = df.select(name.alias("name")).with_columns(pl.int_range(pl.len()).alias("i"))
    # Deduplicate: a repeated name gets a roman numeral ("Rocket Crispy Express II").
    dup = df.with_columns(pl.col("i").cum_count().over("name").alias("k"))
    roman = {2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII", 9: "IX"}
    k = dup["k"].to_numpy()
    names = dup["name"].to_numpy().astype(object)
    for j in np.flatnonzero(k > 1):  # rare: only colliding brand names
        names[j] = f"{names[j]} {roman.get(int(k[j]), str(int(k[j])))}"
    return names


def _item_names(seed: int, tree: _Tree, leaf: np.ndarray, town: np.ndarray, brand: np.ndarray,
                brand_names: np.ndarray | None) -> tuple[pl.Series, pl.Series]:
    """The ``name`` and ``brand`` columns: independents get a generated name and are their own
    brand; a chain outlet is ``"<brand> (<town>)"`` with its chain as brand."""
    n = len(leaf)
    rng_n = np.random.default_rng([seed, 3])
    cat2 = tree.leaf_cat2[leaf]
    suffix = _choose_words(rng_n, [lf.suffixes for lf in LEAVES], leaf)
    w1 = _choose_words(rng_n, [CAT2_WORDS[c] + COMMON_WORDS for c in tree.cat2_names], cat2)
    common = np.array(COMMON_WORDS, dtype=object)[rng_n.integers(0, len(COMMON_WORDS), size=n)]
    style = rng_n.random(n)
    names = pl.DataFrame(
        {"w1": _utf8(w1), "common": _utf8(common), "suf": _utf8(suffix), "town": _utf8(town), "style": style},
    ).select(
        pl.when(pl.col("style") < 0.55).then(pl.concat_str(["w1", "suf"], separator=" "))
        .when(pl.col("style") < 0.75).then(pl.concat_str(["town", "suf"], separator=" "))
        .otherwise(pl.concat_str(["common", "w1", "suf"], separator=" "))
        .alias("name")
    )["name"]
    brand_col = names
    if brand_names is not None:
        # A chain outlet is "<brand> (<town>)", as on local-life platforms; its brand column
        # is the chain. An independent shop is its own brand (brand == name).
        chain_rows = np.flatnonzero(brand >= 0)
        outlet = pl.DataFrame({"b": _utf8(brand_names[brand[chain_rows]]),
                               "t": _utf8(town[chain_rows])})
        brand_col = names.clone().scatter(chain_rows, outlet["b"])
        names = names.clone().scatter(chain_rows, outlet.select(pl.format("{} ({})", "b", "t"))[:, 0])
    return names, brand_col
