"""The whole asset chain on the small generated world with a tiny BERT, then an incremental
refresh: new items arrive, existing embeddings are reused and existing SIDs stay identical."""

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.alignment.encoder import build_tiny_bert
from orchestration.cli import materialize_graph
from orchestration.definitions import build_defs
from resources import DataSource, EncoderResource, LgsidHome

FAST = {"ops": {
    "reward_model": {"config": {"anchors_total": 75, "anchors_floor": 5, "epochs": 4}},
    "aligned_encoder": {"config": {"max_pairs": 48, "batch_size": 16}},
    "sid_codebook": {"config": {"variants": ["lgsid", "hgit_origin", "res_kmeans", "rqvae"]}},
    "alignment_report": {"config": {"max_queries": 100}},
}}
GLOBAL_BEFORE_EVAL = ["item_catalog", "user_interactions", "catalog_quarantine", "cooccurrence_pairs",
                      "distance_ranked_negatives", "reward_model", "aligned_encoder", "item_embeddings",
                      "alignment_report", "sid_codebook", "sid_table"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, test_world):
    root = tmp_path_factory.mktemp("e2e")
    base = root / "data"
    base.mkdir()
    test_world.items.write_parquet(base / "items.parquet")
    # One check-in on an unknown venue, as in gowalla_nyc: it is quarantined into the
    # "unassigned" partition, whose catalog is empty, and every per-city asset must cope.
    stray = test_world.interactions.head(1).with_columns(pl.lit("no-such-venue").alias("item_id"))
    pl.concat([test_world.interactions, stray]).write_parquet(base / "interactions.parquet")
    landing = root / "landing"
    landing.mkdir()
    model = build_tiny_bert(root / "tiny-bert")
    source = DataSource(kind="folder", path=str(base), landing_dir=str(landing))
    home = root / "home"
    defs = build_defs(str(home), source, EncoderResource(model_path=str(model), batch_size=64))
    instance = dg.DagsterInstance.ephemeral()
    cities = source.city_keys()
    assert "unassigned" in cities
    instance.add_dynamic_partitions("city", cities)
    selection = {dg.AssetKey(k) for k in GLOBAL_BEFORE_EVAL}
    materialize_graph(defs, instance, cities, selection, run_config=FAST, echo=lambda *a, **k: None)
    return {"defs": defs, "instance": instance, "cities": cities, "home": LgsidHome(home=str(home)),
            "landing": landing, "world": test_world, "source": source}


def _latest(instance, key, partition=None):
    recs = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1).records
    return recs[0].asset_materialization.metadata


def test_every_asset_materialized_with_metadata(pipeline):
    inst, home = pipeline["instance"], pipeline["home"]
    for key in GLOBAL_BEFORE_EVAL:
        assert inst.fetch_materializations(dg.AssetKey(key), limit=1).records, key
    rm = _latest(inst, "reward_model")
    assert rm["heldout_spearman"].value is not None and "loss_curve" in rm
    # anchors come from a total budget (75), a floor of 5 per city first, the rest by size
    anchors = rm["anchor_budget"].value
    assert anchors["total"] == 75 and anchors["min_per_city"] >= 5
    per_city = {r.data["city_key"]: r.data["anchors"] for r in rm["anchors_per_city"].records}
    assert sum(per_city.values()) == 75 and len(per_city) == anchors["cities"]
    ae = _latest(inst, "aligned_encoder")
    assert ae["steps"].value >= 3 and "loss_curves" in ae
    emb = home.read("item_embeddings")
    assert set(emb["variant"].unique()) == {"origin", "aligned"}
    assert emb.group_by("variant").len()["len"].to_list() == [300, 300]
    sids = home.read("sid_table")
    assert sids.group_by("method").agg(pl.col("item_id").n_unique())["item_id"].to_list() == [300] * 4
    from assets.tokenization import DEFAULT_SID_VARIANT, read_manifest

    # the shipped default is fitted by default; a variant list without it ships its first variant
    assert read_manifest(home)["default_variant"] == "lgsid" != DEFAULT_SID_VARIANT


def test_alignment_report_has_both_variants(pipeline):
    meta = _latest(pipeline["instance"], "alignment_report")
    assert "origin.t@5" in meta and "aligned.t@5" in meta
    # Towns are city-qualified, so a neighbour in the query's town is in its city: C@5 >= T@5.
    for variant in ("origin", "aligned"):
        c5, t5 = meta[f"{variant}.c@5"].value, meta[f"{variant}.t@5"].value
        assert 1.0 >= c5 >= t5 >= 0.0, (variant, c5, t5)


def test_incremental_refresh_keeps_embeddings_and_sids(pipeline):
    defs, inst, home, world = pipeline["defs"], pipeline["instance"], pipeline["home"], pipeline["world"]
    city = "portland"
    before_emb = home.read("item_embeddings", [city])
    before_sid = home.read("sid_table")
    # Two new Portland shops land.
    new = world.items.filter(pl.col("city") == "Portland").head(2).with_columns(
        (pl.col("item_id") + "-new").alias("item_id"), (pl.col("name") + " Express").alias("name"))
    new.write_parquet(pipeline["landing"] / "new-shops.parquet")
    sel = {dg.AssetKey(k) for k in ["item_catalog", "user_interactions", "catalog_quarantine",
                                    "item_embeddings", "sid_table"]}
    materialize_graph(defs, inst, [city], sel, echo=lambda *a, **k: None)
    assert (home.root() / "locks" / f"city-{city}.lock").exists()  # the CLI path takes the city's lock
    emb_meta = _latest(inst, "item_embeddings", city)
    n_city = before_emb.filter(pl.col("variant") == "origin").height
    assert emb_meta["origin.encoded"].value == 2 and emb_meta["origin.reused"].value == n_city
    after_emb = home.read("item_embeddings", [city])
    old = before_emb.sort("variant", "item_id")
    kept = after_emb.join(old.select("item_id", "variant"), on=["item_id", "variant"]).sort("variant", "item_id")
    assert kept["embedding"].to_list() == old["embedding"].to_list()
    after_sid = home.read("sid_table")
    joined = before_sid.join(after_sid, on=["item_id", "method"], suffix="_after")
    assert joined.height == before_sid.height
    assert (joined["sid"] == joined["sid_after"]).all()  # existing SIDs identical
    added = after_sid.filter(pl.col("item_id").str.ends_with("-new"))
    assert added.height == 2 * 4 and added["incremental"].all()
    for (method,), grp in after_sid.group_by(["method"]):
        assert grp["sid"].is_unique().all(), method
    # The refresh ran sid_table's blocking uniqueness check, and it passed.
    record = inst.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey("sid_table"), "sid_uniqueness"))
    assert record is not None and record.status.value == "SUCCEEDED", record


def test_recommender_evaluations_and_serving_cache(pipeline):
    defs, inst, home = pipeline["defs"], pipeline["instance"], pipeline["home"]
    cfg = {"ops": {"recommender_evaluations": {"config": {
        "seeds": [0, 1], "tiger_epochs": 2, "tiger_d_model": 32, "tiger_max_seconds": None, "tiger_max_steps": 6,
        "din_epochs": 1,
        "min_core": 2, "methods": ["lgsid", "res_kmeans"]}}}}
    sel = {dg.AssetKey("recommender_evaluations"), dg.AssetKey("user_topk_cache")}
    materialize_graph(defs, inst, pipeline["cities"], sel, run_config=cfg, echo=lambda *a, **k: None)
    meta = _latest(inst, "recommender_evaluations")
    for method in ("lgsid", "res_kmeans"):  # one target per user: NDCG@10 <= Hit@10
        hit10 = meta[f"TIGER.{method}.test_hit@10"].value
        assert 0.0 <= meta[f"TIGER.{method}.test_ndcg@10"].value <= hit10 <= 1.0, method
    for key in ("DIN.Origin.auc", "DIN.lgsid.gauc"):
        assert 0.0 <= meta[key].value <= 1.0, key
    assert "table1_din" in meta and "table2_tiger" in meta and "seed_stats" in meta and "results_plot" in meta
    paired = meta["user_paired"]  # a typed table: sortable in the UI, with a column schema
    assert isinstance(paired, dg.TableMetadataValue)
    methods = {r.data["variant"] for r in paired.records} | {r.data["baseline"] for r in paired.records}
    assert "lgsid" in methods and "res_kmeans" in methods, [r.data for r in paired.records][:2]
    types = {c.name: c.type for c in paired.schema.columns}
    assert any(t == "float" for t in types.values()), types
    assert meta["config"].value["tiger_max_steps"] == 6
    cache = home.read("user_topk_cache")
    assert cache.height > 0 and set(cache["city_key"].unique()) <= set(pipeline["cities"])
    per_user = cache.group_by("user_id").agg(pl.col("item_id").n_unique(), pl.len())
    assert (per_user["item_id"] == per_user["len"]).all()  # distinct items per user
    sid_items = set(home.read("sid_table")["item_id"].to_list())
    assert set(cache["item_id"].to_list()) <= sid_items
    exports = home.artifact_dir("user_topk_cache")
    for city in cache["city_key"].unique().to_list():  # the Parquet copy, written atomically
        copy = pl.read_parquet(exports / f"{city}.parquet")
        assert copy.sort("user_id", "rank").equals(
            cache.filter(pl.col("city_key") == city).select(copy.columns).sort("user_id", "rank"))
    assert not list(exports.glob(".*.tmp"))


def test_refit_rebuilds_embeddings_sids_and_evaluation_on_the_new_version(pipeline):
    """A refit retrains the models, re-encodes every city with the new adapter, fits a new codebook
    version on those embeddings, gives every item a SID under it, and evaluates that version."""
    from assets.tokenization import read_manifest
    from orchestration.refit import REFIT_RUN_CONFIG, refit_selection

    defs, inst, home = pipeline["defs"], pipeline["instance"], pipeline["home"]
    before = read_manifest(home)
    aligned_before = home.read("item_embeddings").filter(pl.col("variant") == "aligned").sort("item_id")
    cfg = {"ops": {**FAST["ops"],  # smaller budgets than the first fit: this checks the wiring, not quality
           "reward_model": {"config": {"anchors_total": 30, "anchors_floor": 3, "epochs": 2, "seed": 1}},
           "aligned_encoder": {"config": {"max_pairs": 16, "batch_size": 16}},
           "alignment_report": {"config": {"max_queries": 30}},
           "sid_codebook": {"config": {"variants": ["lgsid", "res_kmeans"], "hub_share": 0.02,
                                       **REFIT_RUN_CONFIG["ops"]["sid_codebook"]["config"]}},
           "recommender_evaluations": {"config": {"seeds": [0], "tiger_epochs": 1, "tiger_d_model": 32,
                                                  "tiger_max_seconds": None, "tiger_max_steps": 4, "din_epochs": 1,
                                                  "min_core": 2, "methods": ["lgsid"]}}}}
    plan = materialize_graph(defs, inst, pipeline["cities"], refit_selection(defs.resolve_asset_graph()),
                             run_config=cfg, echo=lambda *a, **k: None)
    assert len(plan) == 7
    after = read_manifest(home)
    assert after["number"] == before["number"] + 1
    aligned_after = home.read("item_embeddings").filter(pl.col("variant") == "aligned").sort("item_id")
    assert aligned_after.height == aligned_before.height
    assert aligned_after["embedding"].to_list() != aligned_before["embedding"].to_list()  # the new adapter
    sids = home.read("sid_table").filter(pl.col("codebook_version") == after["version"])
    n_items = home.read("item_catalog").height
    assert sids.group_by("method").agg(pl.col("item_id").n_unique())["item_id"].to_list() == [n_items] * 2
    assert _latest(inst, "recommender_evaluations")["codebook_version"].value == after["version"]
    # the refit gave the 2% most visited items ID-like SIDs: a first-level code of their own, zeros below
    n_hubs = after["variants"]["lgsid"]["hubs"]
    assert after["hub_share"] == 0.02 and n_hubs == int(np.ceil(0.02 * n_items))
    visits = home.read("user_interactions").group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    lgsid = sids.filter(pl.col("method") == "lgsid")
    cut = visits["len"][n_hubs - 1]  # items above the n-th count are hubs, items below it are not (ties aside)
    top = lgsid.filter(pl.col("item_id").is_in(visits.filter(pl.col("len") > cut)["item_id"].implode()))
    rest = lgsid.filter(~pl.col("item_id").is_in(visits.filter(pl.col("len") >= cut)["item_id"].implode()))
    assert top.height >= 1
    hub_sids = np.asarray(top["sid"].to_list())
    assert (hub_sids[:, 1:] == 0).all()
    assert not set(hub_sids[:, 0]) & {s[0] for s in rest["sid"].to_list()}  # a first code no other item has
    assert _latest(inst, "sid_codebook")["lgsid.hubs"].value == n_hubs


def test_sid_table_refuses_new_items_from_another_embedding_space(pipeline):
    """The manifest records each variant's encoder version; new items whose embeddings come from
    another encoder (a re-alignment without a codebook refit) are refused, not silently coded."""
    from assets.tokenization import read_manifest
    from orchestration.cli import StageFailed

    defs, inst, home = pipeline["defs"], pipeline["instance"], pipeline["home"]
    manifest = read_manifest(home)
    emb = home.read("item_embeddings")
    for name, spec in manifest["variants"].items():
        versions = emb.filter(pl.col("variant") == spec["embedding_variant"])["encoder_version"].unique().to_list()
        assert versions == [spec["encoder_version"]], name
    path = home.current("sid_codebook") / "manifest.json"
    original = path.read_text()
    tampered = json.loads(original)
    tampered["variants"]["lgsid"]["encoder_version"] = "an-older-adapter"
    path.write_text(json.dumps(tampered))
    new = pipeline["world"].items.filter(pl.col("city") == "Portland").tail(1).with_columns(
        (pl.col("item_id") + "-space").alias("item_id"))
    new.write_parquet(pipeline["landing"] / "space-check.parquet")
    sel = {dg.AssetKey(k) for k in ["item_catalog", "user_interactions", "catalog_quarantine", "item_embeddings",
                                    "sid_table"]}
    try:
        with pytest.raises(StageFailed, match="sid_table"):
            materialize_graph(defs, inst, ["portland"], sel, echo=lambda *a, **k: None)
        failed = inst.get_runs(limit=1)[0]
        text = " ".join(str(e.dagster_event.event_specific_data) for e in inst.all_logs(failed.run_id)
                        if e.dagster_event is not None and e.dagster_event.is_step_failure)
        assert "mix two embedding spaces" in text and "an-older-adapter" in text
    finally:
        path.write_text(original)
        (pipeline["landing"] / "space-check.parquet").unlink()


def test_lgsid_sid_looks_up_items_and_prefixes(pipeline, capsys):
    from orchestration.cli import main

    home = pipeline["home"]
    root = home.home
    sids = home.read("sid_table")
    item = sids["item_id"][0]
    assert main(["sid", "--home", root, item, "--json", "--k", "3"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["item_id"] == item and rep["codebook_version"]
    for method, entry in rep["methods"].items():
        assert len(entry["sid"]) >= 2 and len(entry["sid_neighbours"]) == 3
        assert all(n["km"] >= 0 for n in entry["sid_neighbours"])
        assert entry["embedding_variant"] in ("origin", "aligned") and len(entry["embedding_neighbours"]) == 3
    first = rep["methods"]["lgsid"]["sid"][0]
    assert main(["sid", "--home", root, "--prefix", str(first), "--method", "lgsid"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"prefix {first}") and item in text
    assert main(["sid", "--home", root, "no-such-item"]) == 2
    assert "not in the item catalogue" in capsys.readouterr().err
    assert main(["sid", "--home", root]) == 2
    assert "either an ITEM_ID or --prefix" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lgsid_export_writes_versions_atomically_in_every_format(pipeline, tmp_path, capsys):
    from lgsid_pipeline.serving.index import read_export
    from orchestration.cli import main

    root = pipeline["home"].home
    for fmt in ("parquet", "csv", "jsonl"):
        out = tmp_path / fmt
        assert main(["export", "--home", root, "--to", str(out), "--format", fmt, "--json"]) == 0
        manifest = json.loads(capsys.readouterr().out)
        assert manifest["format"] == fmt and manifest["codebook_version"]
        assert {"sid_table", "user_topk"} <= set(manifest["files"])
        assert all(m["embedding_variant"] in ("origin", "aligned") and m["encoder_version"]
                   for m in manifest["methods"].values())
        assert not list(out.glob(".*tmp"))  # no temporary file left behind
        back, sids, topk = read_export(out)
        assert sids.height == manifest["files"]["sid_table"]["rows"] and topk.height > 0
        assert sids["sid"].list.len().min() >= 2
        assert (sids["codebook_version"] == manifest["codebook_version"]).all()
    # one method only
    assert main(["export", "--home", root, "--to", str(tmp_path / "one"), "--method", "lgsid"]) == 0
    assert "method lgsid" in capsys.readouterr().out
    assert read_export(tmp_path / "one")[1]["method"].unique().to_list() == ["lgsid"]
    assert main(["export", "--home", root, "--to", str(tmp_path / "x"), "--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    # a damaged file is refused, not served
    (tmp_path / "csv" / "sid_table.csv").write_text("item_id\n1\n")
    with pytest.raises(ValueError, match="does not match its manifest checksum"):
        read_export(tmp_path / "csv")


def test_lgsid_serve_answers_over_real_http(pipeline, tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from orchestration.cli import main

    root = pipeline["home"].home
    export = tmp_path / "export"
    assert main(["export", "--home", root, "--to", str(export)]) == 0
    sids = pl.read_parquet(export / "sid_table.parquet")
    topk = pl.read_parquet(export / "user_topk.parquet")
    port = _free_port()
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--export", str(export),
                             "--port", str(port), "--log-level", "warning"], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"lgsid serve did not start: {proc.stdout.read() if proc.poll() is not None else 'timeout'}")
                time.sleep(0.3)
        assert health["status"] == "ok" and health["items"] == sids["item_id"].n_unique()
        with httpx.Client(base_url=base, timeout=10) as c:
            item = sids.filter(pl.col("method") == "lgsid").row(0, named=True)
            r = c.get(f"/items/{item['item_id']}")
            assert r.status_code == 200 and r.json()["sids"]["lgsid"]["sid_str"] == item["sid_str"]
            r = c.get(f"/sids/{item['sid'][0]}/{item['sid'][1]}", params={"method": "lgsid"})
            assert r.status_code == 200 and item["item_id"] in {x["item_id"] for x in r.json()["shown"]}
            user = topk["user_id"][0]
            r = c.get(f"/users/{user}/topk", params={"k": 3})
            assert r.status_code == 200 and len(r.json()["items"]) == 3
            assert r.json()["items"][0]["item_id"] == topk.filter(pl.col("user_id") == user).sort("rank")["item_id"][0]
            r = c.get("/items/no-such-item")
            assert r.status_code == 404 and "unknown item 'no-such-item'" in r.json()["detail"]
            assert c.get("/users/nobody/topk").status_code == 404
            assert c.get("/sids/1/x").status_code == 400 and "integers" in c.get("/sids/1/x").json()["detail"]
            assert c.get("/sids/1", params={"method": "nope"}).status_code == 400
            for hostile in ("..%2F..%2Fetc%2Fpasswd", "%00", "a" * 5000, "%2e%2e", "<script>"):
                for path in (f"/items/{hostile}", f"/users/{hostile}/topk", f"/sids/{hostile}"):
                    code = c.get(path).status_code
                    assert code in (400, 404), (path[:40], code)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_lgsid_recommend_from_the_cache_and_from_the_model(pipeline, capsys):
    from lgsid_pipeline.recommenders.data import user_history
    from lgsid_pipeline.recommenders.tiger import load_tiger, saved_item_ids
    from lgsid_pipeline.serving.index import recommend
    from orchestration.cli import main

    home = pipeline["home"]
    root = home.home
    ev = home.current("recommender_evaluations")
    cache = pl.read_parquet(ev / "user_topk.parquet")
    user = cache["user_id"][0]
    assert main(["recommend", "--home", root, "--user", user, "--k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "cache" and [r["rank"] for r in out["items"]] == [1, 2, 3, 4, 5]
    assert all(r["km"] is None or r["km"] >= 0 for r in out["items"])
    # a user the cache does not hold is ranked by the saved model, exactly as the cache ranks
    history = [str(h) for h in user_history(home.read("user_interactions"), user)]
    model, codec = load_tiger(ev / "tiger")
    fresh = recommend(user, k=5, history=history, items=home.read("item_catalog"),
                      model_loader=lambda: (model, codec, saved_item_ids(ev / "tiger")))
    assert fresh["source"] == "model"
    assert [r["item_id"] for r in fresh["items"]] == [r["item_id"] for r in out["items"]]
    # local-life mode: every item within the radius of the last place
    assert main(["recommend", "--home", root, "--user", user, "--k", "3", "--within-km", "2", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert local["items"] and all(r["km"] <= 2 for r in local["items"])
    assert main(["recommend", "--home", root, "--user", user, "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"user {user}: top 3 from the cache")
    assert main(["recommend", "--home", root, "--user", "nobody-at-all"]) == 2
    assert "unknown user 'nobody-at-all'" in capsys.readouterr().err


def test_docs_data_lists_the_columns_of_every_table_the_pipeline_writes(pipeline):
    from tests.test_data_docs import _section, _two_column_rows

    documented = _two_column_rows(_section("## Output tables"))
    home = pipeline["home"]
    for table, columns in documented.items():
        assert home.table_exists(table), table
        assert home.read(table).columns == columns, table


def test_delta_assets_carry_their_column_schema_and_every_asset_a_code_version(pipeline):
    inst, city = pipeline["instance"], next(c for c in pipeline["cities"] if c != "unassigned")
    for key, column in (("item_catalog", "lat"), ("sid_table", "sid"), ("item_embeddings", "embedding")):
        meta = _latest(inst, key, city)
        cols = {c.name: c.type for c in meta["dagster/column_schema"].schema.columns}
        assert column in cols and "city_key" in cols, (key, cols)
    assert cols["embedding"].startswith("List")
    recs = inst.fetch_materializations(dg.AssetKey("sid_codebook"), limit=1).records
    assert recs[0].asset_materialization.tags.get("dagster/code_version")
