"""The SID shootout command end to end on a tiny dataset (tiny BERT, a few TIGER steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.encoder import build_tiny_bert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import sid_shootout  # noqa: E402  (a package import, so spawned workers can unpickle its functions)


def tiny_dataset(path, n_items=120, n_users=80, seed=0):
    """Items in 4 areas; users walk inside one area, 8 timestamped check-ins each."""
    rng = np.random.default_rng(seed)
    area = np.arange(n_items) % 4
    lat = 40.0 + area * 0.5 + rng.normal(0, 0.01, n_items)
    lon = -74.0 + area * 0.5 + rng.normal(0, 0.01, n_items)
    items = pl.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "name": [f"shop {j}" for j in range(n_items)],
                          "cat1": [f"c{j % 5}" for j in range(n_items)], "province": "NY",
                          "city": [f"city{a}" for a in area], "town": [f"town{a}" for a in area],
                          "lat": lat, "lon": lon})
    rows = []
    for u in range(n_users):
        pool = np.flatnonzero(area == u % 4)
        for t, j in enumerate(rng.choice(pool, 8, replace=False)):
            rows.append({"user_id": f"u{u}", "item_id": f"i{j}", "hours": int(u * 100 + t)})
    inter = pl.DataFrame(rows).with_columns(
        (pl.datetime(2010, 1, 1, time_zone="UTC") + pl.duration(hours=pl.col("hours"))).alias("timestamp")).drop("hours")
    path.mkdir()
    items.write_parquet(path / "items.parquet")
    inter.write_parquet(path / "interactions.parquet")
    return path


def test_shootout_writes_every_figure(tmp_path):
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    out = tmp_path / "out.json"
    methods = "hgit:origin,hgit_geo_last:origin@spatial,res_kmeans:origin,geo_prefix:origin,gnpr_rqvae,random_id"
    res = sid_shootout.main(["--data", str(data), "--out", str(out), "--seeds", "0,1", "--tiger-steps", "6",
                             "--din-epochs", "1", "--methods", methods, "--encoder", str(bert),
                             "--cache", str(tmp_path / "cache"), "--threads", "1", "--codebook-size", "8",
                             "--jobs", "2"])
    saved = json.loads(out.read_text())
    assert saved["best_baseline"] in ("res_kmeans:origin", "geo_prefix:origin", "gnpr_rqvae")
    assert saved["default_method"] != "random_id"
    assert (tmp_path / "out.md").read_text().startswith("### tiny")
    for name in methods.split(","):
        m = saved["methods"][name]
        for view in ("valid", "test", "test_no_airports", "local"):
            assert 0.0 <= m[view]["hit@10"] <= 1.0
        assert len(m["tiger"]) == 2 and len(m["din"]) == 2
        assert set(m["strata"]) == {"airport_or_popular", "near_recent", "revisit", "long_jump"}
        assert 0.0 <= m["collisions"]["collision_rate_before"] <= 1.0
        if name != saved["best_baseline"]:
            p = m["paired"]["valid"]["hit@10"]
            assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"]
    # the default method is the best by validation, never by test
    best_valid = max((n for n in methods.split(",") if n != "random_id"),
                     key=lambda n: saved["methods"][n]["valid"]["hit@10"])
    assert saved["default_method"] == best_valid
    assert res["targets_reachability"] == pytest.approx(saved["targets_reachability"])
    # every test target lies in its user's area (0.5 degrees apart), so local mode keeps them all
    assert saved["methods"]["res_kmeans:origin"]["local"]["eligible_share"] == pytest.approx(1.0)
    # the parallel runs are the serial runs: one process gives the same per-seed figures
    serial = sid_shootout.main(["--data", str(data), "--out", str(tmp_path / "serial.json"), "--seeds", "0,1",
                                "--tiger-steps", "6", "--din-epochs", "1", "--methods", "random_id,res_kmeans:origin",
                                "--encoder", str(bert), "--cache", str(tmp_path / "cache"), "--threads", "1",
                                "--codebook-size", "8", "--jobs", "1"])
    for name in ("random_id", "res_kmeans:origin"):
        for a, b in zip(serial["methods"][name]["tiger"], saved["methods"][name]["tiger"]):
            assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}
        assert serial["methods"][name]["valid"] == saved["methods"][name]["valid"]
    assert len(list((tmp_path / "serial.runs").glob("*.npz"))) == 4


def test_a_rerun_reuses_finished_runs_and_trains_only_what_is_new(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    common = ["--data", str(data), "--tiger-steps", "6", "--din-epochs", "1", "--encoder", str(bert),
              "--cache", str(tmp_path / "cache"), "--threads", "1", "--codebook-size", "8", "--jobs", "1",
              "--runs", str(tmp_path / "runs")]
    first = sid_shootout.main([*common, "--out", str(tmp_path / "a.json"), "--seeds", "0", "--methods", "random_id"])
    trained = []
    real = sid_shootout.train_and_evaluate_tiger

    def counting(split, sid_map, cfg):
        trained.append(cfg.seed)
        return real(split, sid_map, cfg)

    monkeypatch.setattr(sid_shootout, "train_and_evaluate_tiger", counting)
    again = sid_shootout.main([*common, "--out", str(tmp_path / "b.json"), "--seeds", "0,1", "--methods", "random_id"])
    assert trained == [1]  # seed 0 came from the saved run
    a, b = first["methods"]["random_id"], again["methods"]["random_id"]
    assert b["tiger"][0] == a["tiger"][0] and b["din"][0] == a["din"][0]
    # a different step budget is a different run: nothing is reused
    trained.clear()
    sid_shootout.main([*common[:2], "--tiger-steps", "5", *common[4:], "--out", str(tmp_path / "c.json"),
                       "--seeds", "0", "--methods", "random_id"])
    assert trained == [0]


def test_bad_method_names_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown tokenizer 'nope'"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--methods", "nope"])
    with pytest.raises(SystemExit, match="unknown dedup order"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--methods", "hgit@zz"])
    with pytest.raises(SystemExit, match="has no items.parquet"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--methods", "hgit"])
