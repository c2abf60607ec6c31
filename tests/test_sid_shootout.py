"""The SID shootout command end to end on a tiny dataset (tiny BERT, a few TIGER steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.alignment.encoder import build_tiny_bert

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
    with pytest.raises(SystemExit, match="unknown modifier"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--methods", "hgit+ids"])
    with pytest.raises(SystemExit, match="--hub-share must be in"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--hub-share", "1.5"])
    with pytest.raises(SystemExit, match="has no items.parquet"):
        sid_shootout.main(["--data", str(tmp_path), "--out", str(tmp_path / "o.json"), "--methods", "hgit"])


def test_paired_seeds_refit_the_tokenizer_per_run_and_a_dry_run_trains_nothing(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    common = ["--data", str(data), "--tiger-steps", "4", "--din-epochs", "0", "--encoder", str(bert),
              "--cache", str(tmp_path / "cache"), "--threads", "1", "--codebook-size", "8", "--jobs", "1",
              "--runs", str(tmp_path / "runs"), "--methods", "res_kmeans:origin", "--seeds", "0,1"]
    fitted = []
    real_build = sid_shootout.build_sids

    def counting_build(spec, X, ranked, sizes, levels, popularity, seed, *rest):
        fitted.append(seed)
        return real_build(spec, X, ranked, sizes, levels, popularity, seed, *rest)

    monkeypatch.setattr(sid_shootout, "build_sids", counting_build)
    monkeypatch.setattr(sid_shootout, "train_and_evaluate_tiger", lambda *a, **k: pytest.fail("a dry run trained"))
    plan = sid_shootout.main([*common, "--out", str(tmp_path / "d.json"), "--dry-run", "--paired-seeds"])
    assert fitted == [0, 1]  # one fit per run seed, codebook seed 0 + s
    assert plan["to_run"] == [["res_kmeans:origin", 0], ["res_kmeans:origin", 1]] and not (tmp_path / "d.json").exists()
    fitted.clear()
    sid_shootout.main([*common, "--out", str(tmp_path / "d.json"), "--dry-run"])
    assert fitted == [0]  # without --paired-seeds one fit serves both seeds
    monkeypatch.undo()
    paired = sid_shootout.main([*common, "--out", str(tmp_path / "p.json"), "--paired-seeds"])
    per_seed = paired["methods"]["res_kmeans:origin"]["collisions_per_tokenizer_seed"]
    assert set(per_seed) == {"0", "1"}
    ari = paired["methods"]["res_kmeans:origin"]["tokenizer_seed_ari"]
    assert set(ari) == {"1"} and len(ari["1"]) == 3 and all(-1.0 <= a <= 1.0 for a in ari["1"])
    assert paired["settings"]["tokenizer_seed"] == "codebook_seed + run seed"
    # seed 0 of the paired run is the fixed-seed run's seed 0: the same SIDs, the same saved run
    plan = sid_shootout.main([*common, "--out", str(tmp_path / "f.json"), "--dry-run", "--seeds", "0"])
    assert plan["to_run"] == [] and plan["reused"] == [["res_kmeans:origin", 0]]


def test_run_keys_ignore_config_fields_at_their_neutral_value():
    from lgsid_pipeline.recommenders.tiger import TigerConfig

    class _Split:
        def metadata(self):
            return {"users": 3}

    sids = np.arange(6).reshape(3, 2)
    ctx = {"tiger_cfg": TigerConfig(), "din_cfg": sid_shootout.DINConfig(), "din_epochs": 1, "local_km": 5.0,
           "split": _Split()}
    base = sid_shootout._run_key("m", sids, 0, ctx)
    legacy = dict(ctx, tiger_cfg=TigerConfig())
    del legacy["tiger_cfg"].__dict__["bf16"]  # a config recorded before the bf16 option existed
    assert sid_shootout._run_key("m", sids, 0, legacy) == base
    assert sid_shootout._run_key("m", sids, 0, dict(ctx, tiger_cfg=TigerConfig(bf16=True))) != base
    assert sid_shootout._run_key("m", sids, 1, ctx) != base


def test_a_hubs_method_gives_the_most_visited_items_their_own_first_code(tmp_path):
    spec = sid_shootout.parse_method("hgit_geo_last:aligned@spatial+hubs", "item_id")
    assert (spec.tokenizer, spec.embeddings, spec.order, spec.hubs, spec.family) == (
        "hgit_geo_last", "aligned", "spatial", True, "lgsid")
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    res = sid_shootout.main(["--data", str(data), "--out", str(tmp_path / "h.json"), "--seeds", "0",
                             "--tiger-steps", "4", "--din-epochs", "0", "--methods", "res_kmeans:origin,res_kmeans:origin+hubs",
                             "--encoder", str(bert), "--cache", str(tmp_path / "cache"), "--threads", "1",
                             "--codebook-size", "8", "--jobs", "1", "--hub-share", "0.05"])
    plain, hubs = res["methods"]["res_kmeans:origin"], res["methods"]["res_kmeans:origin+hubs"]
    n_ranked = res["split"]["items"]
    assert hubs["collisions"]["hubs"] == int(np.ceil(0.05 * n_ranked)) > 0 and "hubs" not in plain["collisions"]
    assert hubs["collisions"]["codebook_sizes"] == plain["collisions"]["codebook_sizes"]
    assert 0.0 <= hubs["valid"]["hit@10"] <= 1.0


def test_precomputed_origin_embeddings_replace_the_encoder_and_the_device_keys_the_runs(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    common = ["--data", str(data), "--tiger-steps", "4", "--din-epochs", "0", "--threads", "1",
              "--codebook-size", "8", "--jobs", "1", "--runs", str(tmp_path / "runs"),
              "--methods", "res_kmeans:origin", "--seeds", "0", "--dry-run"]
    cache = tmp_path / "cache"
    encoded = sid_shootout.main([*common, "--out", str(tmp_path / "a.json"), "--encoder", str(bert),
                                 "--cache", str(cache)])
    (npy,) = cache.glob("origin-*.npy")
    import lgsid_pipeline.alignment.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "TextEncoder", lambda *a, **k: pytest.fail("the encoder was loaded"))
    keys = []
    real_key = sid_shootout._run_key
    monkeypatch.setattr(sid_shootout, "_run_key", lambda *a: keys.append(real_key(*a)) or keys[-1])
    given = sid_shootout.main([*common, "--out", str(tmp_path / "b.json"), "--origin-npy", str(npy)])
    assert given["to_run"] == encoded["to_run"] == [["res_kmeans:origin", 0]]
    sid_shootout.main([*common, "--out", str(tmp_path / "c.json"), "--origin-npy", str(npy), "--device", "cuda"])
    assert len(keys) == 2 and keys[0] != keys[1]  # a CUDA run is never mistaken for a saved CPU run
    bad = tmp_path / "bad.npy"
    np.save(bad, np.load(npy)[:-1])
    with pytest.raises(SystemExit, match=r"expected a float \(n_items="):
        sid_shootout.main([*common, "--out", str(tmp_path / "d.json"), "--origin-npy", str(bad)])
    X = np.load(npy)
    X[3, 0] = np.nan
    np.save(bad, X)
    with pytest.raises(SystemExit, match=r"non-finite values \(row 3\)"):
        sid_shootout.main([*common, "--out", str(tmp_path / "e.json"), "--origin-npy", str(bad)])
