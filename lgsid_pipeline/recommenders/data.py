"""Next-item split: the leave-one-out protocol of ``../shared/data/README.md``.

Steps, in order:

1. order each user's history by ``timestamp``, else ``seq_idx``; datasets with neither but a
   fixed ``split`` column (yelp_multicity) are ordered train < valid/tune < test, then by source
   row (the ``source_row`` column the catalog stage writes, so the order survives a Delta
   round trip; the frame's row order without it; see "held-out set completion" below);
2. drop interactions on items missing from the catalogue (counted);
3. iterated k-core filtering on users and items (``min_core``; 0 disables);
4. collapse immediate repeats (A A B -> A B);
5. leave-one-out: the last item is the test target, the second-last the validation target, the
   rest is training. Users left with fewer than three items are dropped (counted).

Held-out set completion (yelp_multicity): the source fixes a train / tune / test split but no
order inside a split and no test item appears in the history. Ordering by split keeps the
protocol's one-target leave-one-out shape: the test target is one item of the user's held-out
test set, the validation target another, and the other held-out items sit at the end of the
history. Read results on such data as "complete the user's held-out set", not "predict the
next visit".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from lgsid_pipeline.schema import source_order

_SPLIT_RANK = {"train": 0, "valid": 1, "validation": 1, "tune": 1, "val": 1, "test": 2}
ORDERS = ("auto", "timestamp", "seq_idx", "split", "row")


@dataclass
class SplitData:
    """Leave-one-out split over an integer item vocabulary.

    ``item_ids[j]`` is the catalogue id of item index ``j``; every sequence / target holds item
    indices. Row ``u`` of every per-user field belongs to ``user_ids[u]``.
    """

    item_ids: list[str]
    user_ids: list[str]
    train_seqs: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    order: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def history(self, stage: str) -> list[np.ndarray]:
        """Input history for ``stage``: training items ("valid"), plus the valid target ("test"),
        plus the test target ("serve": the whole history, for recommending the next visit)."""
        if stage == "valid":
            return self.train_seqs
        if stage == "test":
            return [np.append(s, v) for s, v in zip(self.train_seqs, self.valid_target)]
        if stage == "serve":
            return [np.append(s, [v, t]) for s, v, t in zip(self.train_seqs, self.valid_target, self.test_target)]
        raise ValueError(f"stage must be 'valid', 'test' or 'serve', got {stage!r}")

    def target(self, stage: str) -> np.ndarray:
        if stage == "valid":
            return self.valid_target
        if stage == "test":
            return self.test_target
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def last_item(self, stage: str) -> np.ndarray:
        """The item masked at evaluation: the last item of the stage's history."""
        if stage == "valid":
            return np.array([s[-1] for s in self.train_seqs], dtype=np.int64)
        if stage == "test":
            return self.valid_target.astype(np.int64)
        if stage == "serve":
            return self.test_target.astype(np.int64)
        raise ValueError(f"stage must be 'valid', 'test' or 'serve', got {stage!r}")

    def item_index(self) -> dict[str, int]:
        return {it: j for j, it in enumerate(self.item_ids)}

    def metadata(self) -> dict[str, int | str]:
        return {"order": self.order, "users": self.n_users, "items": self.n_items, **self.counts}


def _choose_order(df: pl.DataFrame, order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order != "auto":
        return order
    n = df.height
    if "timestamp" in df.columns and n and df["timestamp"].null_count() == 0:
        return "timestamp"
    if "seq_idx" in df.columns and n and df["seq_idx"].null_count() == 0:
        return "seq_idx"
    if "split" in df.columns and n and df["split"].null_count() == 0:
        return "split"
    return "row"


def _sort_keys(df: pl.DataFrame, order: str) -> list[str]:
    if order == "timestamp":
        if "timestamp" not in df.columns or df["timestamp"].null_count():
            raise ValueError("order='timestamp' needs a non-null 'timestamp' column")
        keys = ["timestamp"] + (["seq_idx"] if "seq_idx" in df.columns else [])
    elif order == "seq_idx":
        if "seq_idx" not in df.columns or df["seq_idx"].null_count():
            raise ValueError("order='seq_idx' needs a non-null 'seq_idx' column")
        keys = ["seq_idx"]
    elif order == "split":
        keys = ["_split_rank"]
    else:
        keys = []
    return ["user_id", *keys, "_row"]


def _in_history_order(df: pl.DataFrame, order: str) -> tuple[pl.DataFrame, str, list[str]]:
    """``df`` (with a ``_row`` column) sorted by user, then the chosen order; (frame, order, keys)."""
    chosen = _choose_order(df, order)
    if chosen == "split":
        if "split" not in df.columns or df["split"].null_count():
            raise ValueError("order='split' needs a non-null 'split' column")
        lowered = df["split"].str.to_lowercase()
        unknown = set(lowered.unique().to_list()) - set(_SPLIT_RANK)
        if unknown:
            raise ValueError(f"column 'split' has unknown values {sorted(unknown)}")
        df = df.with_columns(lowered.replace_strict(_SPLIT_RANK, return_dtype=pl.Int8).alias("_split_rank"))
    keys = _sort_keys(df, chosen)
    return df.sort(keys), chosen, keys


def last_value_per_user(interactions: pl.DataFrame, column: str, *, order: str = "auto") -> pl.DataFrame:
    """``user_id`` and ``column`` of each user's most recent interaction, in the split's order
    (timestamp, else seq_idx, else split rank; then ``source_row`` when the table has it, else
    row order). Works on tables written before ``source_row`` existed."""
    for col in ("user_id", column):
        if col not in interactions.columns:
            raise ValueError(f"interactions lack required column {col!r}")
    df = interactions.with_columns(source_order(interactions).alias("_row"), pl.col("user_id").cast(pl.Utf8))
    df, _, _ = _in_history_order(df, order)
    return df.group_by("user_id", maintain_order=True).agg(pl.col(column).last())


def user_history(interactions: pl.DataFrame, user_id: str, column: str = "item_id", *,
                 order: str = "auto") -> list:
    """One user's ``column`` values, oldest first, in the split's order (as
    :func:`last_value_per_user`); empty when the user has no interactions."""
    df = interactions.filter(pl.col("user_id").cast(pl.Utf8) == str(user_id))
    if df.is_empty():
        return []
    df = df.with_columns(source_order(df).alias("_row"), pl.col("user_id").cast(pl.Utf8))
    df, _, _ = _in_history_order(df, order)
    return df[column].to_list()


def k_core(df: pl.DataFrame, min_core: int) -> tuple[pl.DataFrame, int]:
    """Iterated k-core on users and items (interaction counts); returns (frame, iterations)."""
    if min_core <= 0:
        return df, 0
    it = 0
    while True:
        it += 1
        u = df.group_by("user_id").len().filter(pl.col("len") >= min_core).select("user_id")
        i = df.group_by("item_id").len().filter(pl.col("len") >= min_core).select("item_id")
        new = df.join(u, on="user_id", how="semi").join(i, on="item_id", how="semi")
        if new.height == df.height:
            return new, it
        df = new


def next_item_split(
    interactions: pl.DataFrame,
    *,
    min_core: int = 5,
    order: str = "auto",
    collapse_repeats: bool = True,
    known_items: pl.Series | list[str] | set[str] | None = None,
) -> SplitData:
    """Apply the README next-item protocol; see the module docstring for the steps."""
    for col in ("user_id", "item_id"):
        if col not in interactions.columns:
            raise ValueError(f"interactions lack required column {col!r}")
    df = interactions.with_columns(source_order(interactions).alias("_row")).with_columns(
        pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8)
    )
    bad = df.filter(pl.col("user_id").is_null() | pl.col("item_id").is_null())
    if bad.height:
        raise ValueError(f"interactions row {int(bad['_row'][0])}: null user_id or item_id")
    counts: dict[str, int] = {"raw_interactions": df.height}

    df, chosen, keys = _in_history_order(df, order)

    if known_items is not None:
        known = pl.DataFrame({"item_id": pl.Series(list(known_items), dtype=pl.Utf8)}).unique()
        kept = df.join(known, on="item_id", how="semi")
        counts["dropped_unknown_items"] = df.height - kept.height
        df = kept
    else:
        counts["dropped_unknown_items"] = 0

    before = df.height
    df, iters = k_core(df, min_core)
    counts["dropped_by_core"] = before - df.height
    counts["core_iterations"] = iters
    df = df.sort(keys)

    if collapse_repeats:
        prev = pl.col("item_id").shift(1).over("user_id")
        kept = df.filter(prev.is_null() | (pl.col("item_id") != prev))
        counts["collapsed_repeats"] = df.height - kept.height
        df = kept
    else:
        counts["collapsed_repeats"] = 0

    seqs = df.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
    short = seqs.filter(pl.col("item_id").list.len() < 3)
    counts["dropped_short_users"] = short.height
    seqs = seqs.filter(pl.col("item_id").list.len() >= 3).sort("user_id")
    if seqs.height == 0:
        raise ValueError("no user keeps >= 3 interactions after filtering; lower min_core or check 'item_id'")

    item_ids = sorted(set(seqs["item_id"].explode().to_list()))
    index = {it: j for j, it in enumerate(item_ids)}
    flat = np.fromiter((index[x] for x in seqs["item_id"].explode().to_list()), dtype=np.int64)
    lens = seqs["item_id"].list.len().to_numpy().astype(np.int64)
    ends = np.cumsum(lens)
    starts = ends - lens
    train = [flat[s : e - 2] for s, e in zip(starts, ends)]
    counts["kept_interactions"] = int(lens.sum())
    return SplitData(
        item_ids=item_ids,
        user_ids=seqs["user_id"].to_list(),
        train_seqs=train,
        valid_target=flat[ends - 2],
        test_target=flat[ends - 1],
        order=chosen,
        counts=counts,
    )


def item_attribute(split: SplitData, items: pl.DataFrame, column: str) -> np.ndarray:
    """``items[column]`` aligned to the split's item vocabulary (NaN / None where missing)."""
    for col in ("item_id", column):
        if col not in items.columns:
            raise ValueError(f"items lack required column {col!r}")
    vocab = pl.DataFrame({"item_id": split.item_ids})
    joined = vocab.join(
        items.select(pl.col("item_id").cast(pl.Utf8), pl.col(column)).unique("item_id", keep="first"),
        on="item_id",
        how="left",
        maintain_order="left",
    )
    s = joined[column]
    if s.dtype.is_numeric():
        return s.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return np.asarray(s.to_list(), dtype=object)
