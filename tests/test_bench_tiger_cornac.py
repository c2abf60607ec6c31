"""The cornac TIGER comparison of the speed benchmark runs on tiny synthetic data and reports rates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cornac")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_tiger  # noqa: E402
from lgsid_pipeline.recommenders.data import SplitData  # noqa: E402
from lgsid_pipeline.recommenders.tiger import TigerConfig, history_matrix  # noqa: E402
from lgsid_pipeline.tokenizers.dedup import unique_sids  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(n_items: int = 300, n_users: int = 200, seed: int = 0) -> tuple[SplitData, np.ndarray]:
    """Random sequences and random 3-level codes made unique by our dedup digit (in a random order
    inside each bucket, so it is not the row-order digit cornac would append)."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.integers(0, 8, n_items), rng.integers(0, 8, n_items), rng.integers(0, 4, n_items)], 1)
    codes, _ = unique_sids(base, "append", order_key=rng.permutation(n_items))
    seqs = [rng.integers(0, n_items, rng.integers(3, 25)) for _ in range(n_users)]
    split = SplitData(item_ids=[f"i{j}" for j in range(n_items)], user_ids=[f"u{u}" for u in range(n_users)],
                      train_seqs=seqs, valid_target=rng.integers(0, n_items, n_users),
                      test_target=rng.integers(0, n_items, n_users), order="seq_idx")
    return split, codes.astype(np.int64)


def test_compare_cornac_reports_positive_finite_rates():
    split, codes = _tiny()
    assert np.unique(codes, axis=0).shape[0] == codes.shape[0]
    cfg = TigerConfig(epochs=1000, max_steps=3, max_valid_users=16, seed=0)
    sid_map = dict(zip(split.item_ids, codes.tolist()))
    model, codec, tk, fast_sps = bench_tiger._train(split, sid_map, cfg)
    users = np.arange(8)
    hist = history_matrix([split.history("valid")[u] for u in users], cfg.max_history)
    _, fast_ups = bench_tiger._rank(model, tk, hist, users, split.last_item("valid")[users], cfg)

    res = bench_tiger.compare_cornac(split, codec.codes, cfg, 3, users, fast_sps, fast_ups)

    assert set(res) >= {"version", "method", "differences", "steps", "steps_per_s", "users", "users_per_s",
                        "ratio_fast_over_cornac_steps", "ratio_fast_over_cornac_users"}
    assert res["steps"] == 3 and res["users"] == 8
    for key in ("steps_per_s", "users_per_s", "ratio_fast_over_cornac_steps", "ratio_fast_over_cornac_users"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["differences"] and all(isinstance(d, str) for d in res["differences"])
    assert res["parameters"]["cornac"] > 0 and res["parameters"]["ours"] > 0
