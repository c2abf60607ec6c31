"""The SID codebook registry (lgsid_pipeline/tokenizers/registry.py) on small synthetic data:
version numbering, manifests and their history, the embedding-space guard, fitting one version,
and the stable merge behind the sid_table asset."""

import datetime
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lgsid_pipeline.tokenizers import load_tokenizer, registry
from lgsid_pipeline.tokenizers.registry import (CodebookError, CodebookSettings, check_embedding_space,
                                                fit_codebook_version, known_sids, manifest_history, manifest_path,
                                                next_version, read_manifest, stable_sid_table, write_manifest)
from lgsid_pipeline.tokenizers.synthetic import clustered_catalog


class FakeHome:
    """The two methods of resources.LgsidHome the registry uses, plus publish."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointer: Path | None = None

    def artifact_dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def current(self, asset: str) -> Path | None:
        return self.pointer

    def publish(self, asset: str, path: Path) -> None:
        self.pointer = path


# --- versions and manifests -------------------------------------------------------------------
def test_versions_count_up_from_one_and_carry_the_utc_time():
    t = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert next_version(None, t) == (1, "v1-20240102T030405")
    assert next_version({"number": 1}, t) == (2, "v2-20240102T030405")
    assert next_version({"number": 41, "version": "v41-x"}, t) == (42, "v42-20240102T030405")
    number, version = next_version({"number": 6})  # default: now, in UTC
    assert number == 7 and re.fullmatch(r"v7-\d{8}T\d{6}", version)


def test_manifest_round_trip_through_the_current_version(tmp_path):
    home = FakeHome(tmp_path)
    assert manifest_path(home) is None and read_manifest(home) is None  # nothing published yet
    out = home.artifact_dir("sid_codebook", "v1-a")
    home.publish("sid_codebook", out)
    assert manifest_path(home) == out / "manifest.json"
    assert read_manifest(home) is None  # a version folder without its manifest (yet)
    manifest = {"version": "v1-a", "number": 1, "variants": {"m": {"method": "res_kmeans"}}, "where": out}
    path = write_manifest(out, manifest)
    assert path == out / "manifest.json"
    assert json.loads(path.read_text()) == read_manifest(home)
    assert read_manifest(home) == {**manifest, "where": str(out)}  # non-JSON values are written as str
    assert path.read_text().startswith('{\n "version": "v1-a"')  # indent=1


def test_a_damaged_manifest_is_a_codebook_error_that_says_what_to_do(tmp_path):
    home = FakeHome(tmp_path)
    out = home.artifact_dir("sid_codebook", "v1-a")
    home.publish("sid_codebook", out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CodebookError, match=r"manifest.json is not valid JSON.*re-materialize sid_codebook "
                                            r"with refit=True \(a new version\) or restore the file"):
        read_manifest(home)
    assert issubclass(CodebookError, ValueError)


def test_history_is_every_version_oldest_first_by_number(tmp_path):
    home = FakeHome(tmp_path)
    # folder names sort v1, v10, v2 as text; the history orders by number
    for name, number in [("v10-c", 10), ("v1-a", 1), ("v2-b", 2)]:
        write_manifest(home.artifact_dir("sid_codebook", name), {"version": name, "number": number})
    home.artifact_dir("sid_codebook", "v11-unfinished")  # no manifest: not a version yet
    (tmp_path / "sid_codebook" / "current.json").write_text("{}")  # files beside the folders are skipped
    assert [m["number"] for m in manifest_history(home)] == [1, 2, 10]
    assert [m["version"] for m in manifest_history(home)] == ["v1-a", "v2-b", "v10-c"]


# --- the embedding-space guard ----------------------------------------------------------------
def test_embedding_space_check():
    spec = {"embedding_variant": "origin", "encoder_version": "enc1"}
    check_embedding_space("m", spec, "v1", "x", pl.Series(["enc1", "enc1"]))  # the fitted space: fine
    # manifests written before encoder_version existed are not checked, even with missing rows
    check_embedding_space("m", {"embedding_variant": "origin"}, "v1", "x", pl.Series([None, "other"]))
    with pytest.raises(CodebookError, match=r"^city x: 2 new items have no 'origin' embedding: "
                                            r"materialize item_embeddings for x first$"):
        check_embedding_space("m", spec, "v1", "x", pl.Series([None, "enc1", None], dtype=pl.Utf8))
    with pytest.raises(CodebookError, match=r"city x, method m: new items' 'origin' embeddings come from encoder "
                                            r"\['enc0', 'enc2'\], but codebook v1 was fitted on embeddings from "
                                            r"encoder 'enc1'; .*would mix two embedding spaces"):
        check_embedding_space("m", spec, "v1", "x", pl.Series(["enc2", "enc1", "enc0"]))


# --- fitting one version --------------------------------------------------------------------------
def _settings(**kw) -> CodebookSettings:
    base = dict(codebook_sizes=[4, 4], levels=2, seed=0, dedup="append", dedup_order="item_id", hub_share=0.0,
                default_variant="rk")
    return CodebookSettings(**{**base, **kw})


def test_fit_codebook_version_writes_tokenizers_assignments_and_manifest(tmp_path):
    X, items = clustered_catalog(n=40, d=4, seed=1)
    calls, timed = [], []

    def embeddings(name):
        calls.append(name)
        return X, ["enc1"], "origin"

    class Timer:
        def __call__(self, label):
            timed.append(label)
            return __import__("contextlib").nullcontext()

    manifest, diags = fit_codebook_version(
        tmp_path, 3, "v3-t", items, {"rk": ("res_kmeans", {}), "rid": ("random_id", {})}, embeddings, _settings(),
        popularity=None, order_key=None, identical_prompt_share=0.25, timed=Timer())
    assert calls == ["rk", "rid"] and timed == ["fit_rk", "fit_rid"]  # in the given order
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert {k: manifest[k] for k in ("version", "number", "codebook_sizes", "levels", "n_items", "dedup",
                                     "dedup_order", "hub_share", "seed", "default_variant",
                                     "identical_prompt_share")} == {
        "version": "v3-t", "number": 3, "codebook_sizes": [4, 4], "levels": 2, "n_items": 40, "dedup": "append",
        "dedup_order": "item_id", "hub_share": 0.0, "seed": 0, "default_variant": "rk", "identical_prompt_share": 0.25}
    assert manifest["fitted_on"] == "every item of the catalogue (all cities)"
    assert list(manifest["variants"]) == ["rk", "rid"] == list(diags)
    assert {k: manifest["variants"]["rk"][k] for k in ("method", "embedding_variant", "encoder_version")} == {
        "method": "res_kmeans", "embedding_variant": "origin", "encoder_version": "enc1"}
    assert "hubs" not in manifest["variants"]["rk"]  # hub_share 0
    for name in ("rk", "rid"):
        d = diags[name]
        assert manifest["coverage_q90"][name] == [lv["coverage"]["q90"] for lv in d["per_level"]]
        assert manifest["dead_codes"][name] == [lv["dead"] for lv in d["per_level"]]
        assert manifest["collision_rate_before"][name] == d["collision_rate_before"]
        assert "collisions" in d
    table = pl.read_parquet(tmp_path / "assignments.parquet")
    assert table.columns == ["item_id", "city_key", "method", "sid", "raw_codes"]
    assert table["method"].to_list() == ["rk"] * 40 + ["rid"] * 40
    rk = table.filter(pl.col("method") == "rk")
    assert rk["item_id"].to_list() == items["item_id"].to_list()
    sids = np.asarray(rk["sid"].to_list())
    assert sids.shape == (40, 3) and len({tuple(s) for s in sids.tolist()}) == 40  # unique SIDs
    raw = load_tokenizer(tmp_path / "rk").transform(X, items)  # the saved tokenizer gives the raw codes
    assert np.array_equal(np.asarray(rk["raw_codes"].to_list()), raw)
    assert np.array_equal(sids[:, :2], raw)  # append: the raw codes, then the dedup digit


def test_fit_refuses_embeddings_from_two_encoders(tmp_path):
    X, items = clustered_catalog(n=20, d=4, seed=1)
    with pytest.raises(CodebookError, match=r"^rk: the 'aligned' item embeddings come from 2 encoder versions "
                                            r"\['a', 'b'\] \(some cities still hold"):
        fit_codebook_version(tmp_path, 1, "v1-t", items, {"rk": ("res_kmeans", {})},
                             lambda name: (X, ["a", "b"], "aligned"), _settings(),
                             popularity=None, order_key=None, identical_prompt_share=0.0)
    assert not (tmp_path / "manifest.json").exists()


# --- the stable merge ---------------------------------------------------------------------------
# One variant "m", L = 2 raw levels + the dedup digit. The stub tokenizer's raw codes are the
# first two embedding coordinates, so every expected SID below is worked out by hand.
FITTED = pl.DataFrame({"item_id": ["a", "b", "c"], "method": "m",
                       "sid": pl.Series([[0, 0, 0], [0, 0, 1], [2, 0, 0]], dtype=pl.List(pl.Int32))})
# under this version: d was assigned incrementally earlier; the stale row for a loses to the fitted one
PREVIOUS = pl.DataFrame({"item_id": ["d", "a"], "method": "m",
                         "sid": pl.Series([[1, 0, 0], [5, 5, 5]], dtype=pl.List(pl.Int32))})
# c is fitted but no longer in the catalogue (dropped); e, f, g, h are new
CATALOG = pl.DataFrame({"item_id": ["d", "b", "a", "e", "g", "h", "f"],
                        "city_key": ["x", "x", "x", "x", "y", "y", "y"]})
MANIFEST = {"version": "v1-t", "variants": {"m": {"method": "res_kmeans", "embedding_variant": "origin",
                                                  "encoder_version": "enc1"}}}


def _embeddings(encoder: str = "enc1") -> pl.DataFrame:
    origin = {"e": [0.0, 0.0], "f": [1.0, 0.0], "g": [2.0, 0.0], "h": [0.0, 0.0]}
    rows = [{"item_id": k, "variant": "origin", "embedding": v, "encoder_version": encoder} for k, v in origin.items()]
    # another variant's rows for the same items: coding from them would give (9, 9, 0) SIDs
    rows += [{"item_id": k, "variant": "aligned", "embedding": [9.0, 9.0], "encoder_version": "enc9"} for k in origin]
    return pl.DataFrame(rows)


class StubTokenizer:
    def transform(self, X, items):
        assert X.dtype == np.float32 and X.shape == (items.height, 2)
        return X.astype(np.int32)


@pytest.fixture
def loads(monkeypatch):
    seen = []

    def load(path):
        seen.append(Path(path))
        return StubTokenizer()

    monkeypatch.setattr(registry, "load_tokenizer", load)
    return seen


def test_known_sids_fitted_first_then_earlier_incremental_items():
    known = known_sids(FITTED, PREVIOUS, ["m"])["m"].sort("item_id")
    assert known.to_dict(as_series=False) == {"item_id": ["a", "b", "c", "d"],
                                              "sid": [[0, 0, 0], [0, 0, 1], [2, 0, 0], [1, 0, 0]]}
    for previous in (None, PREVIOUS.clear()):
        assert known_sids(FITTED, previous, ["m"])["m"].equals(FITTED.select("item_id", "sid"))


def test_stable_merge_keeps_known_sids_assigns_new_ones_and_leaves_dropped_items_out(tmp_path, loads):
    reads = []

    def read():
        reads.append(1)
        return _embeddings()

    out, per_city = stable_sid_table(CATALOG, ["x", "y"], MANIFEST, FITTED, PREVIOUS, tmp_path, read)
    assert out.columns == ["item_id", "method", "codebook_version", "sid", "incremental", "city_key"]
    assert out.to_dict(as_series=False) == {
        # city x (items sorted): a, b keep their fitted SIDs, d its earlier incremental one; e is new,
        # raw (0, 0): digits 0 (a) and 1 (b) are taken under (0, 0), so e gets 2.
        # city y, after x: f raw (1, 0): d holds digit 0 -> 1; g raw (2, 0): only the dropped c holds
        # digit 0, and its SID stays taken -> 1; h raw (0, 0): a, b and x's e hold 0-2 -> 3.
        "item_id": ["a", "b", "d", "e", "f", "g", "h"],
        "method": ["m"] * 7,
        "codebook_version": ["v1-t"] * 7,
        "sid": [[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 2], [1, 0, 1], [2, 0, 1], [0, 0, 3]],
        "incremental": [False, False, False, True, True, True, True],
        "city_key": ["x", "x", "x", "x", "y", "y", "y"],
    }
    assert "c" not in out["item_id"].to_list()  # dropped from the catalogue: not in the table
    assert per_city == {"x": {"items": 4, "codebook_version": "v1-t", "m.incremental": 1},
                        "y": {"items": 3, "codebook_version": "v1-t", "m.incremental": 3}}
    assert len(reads) == 1 and loads == [tmp_path / "m"]  # embeddings and tokenizer loaded once


def test_stable_merge_reads_nothing_when_every_item_is_known(tmp_path, loads):
    def read():
        raise AssertionError("no new items: the embeddings are not read")

    out, per_city = stable_sid_table(CATALOG.filter(pl.col("city_key") == "x").head(3), ["x", "z"], MANIFEST,
                                     FITTED, PREVIOUS, tmp_path, read)
    assert out["item_id"].to_list() == ["a", "b", "d"] and not any(out["incremental"])
    assert out["sid"].to_list() == [[0, 0, 0], [0, 0, 1], [1, 0, 0]]
    assert per_city["z"] == {"items": 0, "codebook_version": "v1-t", "m.incremental": 0}  # a city with no items
    assert loads == []


def test_stable_merge_refuses_new_items_from_another_embedding_space(tmp_path, loads):
    with pytest.raises(CodebookError, match=r"city x, method m: .*\['enc2'\].*mix two embedding spaces"):
        stable_sid_table(CATALOG, ["x"], MANIFEST, FITTED, PREVIOUS, tmp_path, lambda: _embeddings("enc2"))
    assert loads == []  # refused before the tokenizer is loaded
