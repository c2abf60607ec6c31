"""The CLI turns a bad command line or input into one clear line and exit status 2, not a traceback."""

import json

import pytest

from orchestration.cli import main

CASES = [
    (["--source-json", "{bad"], "--source-json is not valid JSON"),
    (["--source-json", "[1]"], "--source-json must be a JSON object"),
    (["--source-json", '{"kind": "files"}'], "source kind 'files' needs items_file"),
    (["--source-json", '{"kind": "nope"}'], "--source-json: kind: Input should be 'generator', 'folder', 'files'"),
    (["--data", "/nonexistent/lgsid-data"], "/nonexistent/lgsid-data: dataset folder does not exist"),
    (["--encoder-json", '{"pooling": "max"}'], "--encoder-json: pooling: Input should be 'cls', 'mean' or 'last'"),
    (["--encoder-json", '{"prompt_template": "geohash"}'], "--encoder-json: prompt_template: Input should be"),
    (["--preset", "test", "--run-config", "{x"], "--run-config is not valid JSON"),
    # enum-like settings are Literal types, so a value outside the choices is refused before any run
    (["--preset", "test", "--select", "sid_codebook", "--run-config",
      '{"ops": {"sid_codebook": {"config": {"dedup_order": "zz"}}}}'],
     "--run-config does not fit the assets' config: Value at path root:ops:sid_codebook:config:dedup_order "
     "not in enum type"),
    (["--preset", "test", "--select", "reward_model", "--run-config",
      '{"ops": {"reward_model": {"config": {"mode": "sideways"}}}}'],
     "--run-config does not fit the assets' config: Value at path root:ops:reward_model:config:mode not in enum"),
]


@pytest.mark.parametrize("extra,message", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("LGSID_DEBUG", raising=False)
    rc = main(["materialize", "--home", str(tmp_path / "home"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"lgsid: error: {message}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_debug_env_keeps_the_traceback(tmp_path, monkeypatch):
    from orchestration.cli import UsageError

    monkeypatch.setenv("LGSID_DEBUG", "1")
    with pytest.raises(UsageError, match="not valid JSON"):
        main(["materialize", "--home", str(tmp_path / "home"), "--source-json", "{bad"])


def test_unmapped_columns_and_unknown_ids_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LGSID_DEBUG", raising=False)
    shops = tmp_path / "shops.csv"
    shops.write_text("shop,latitude,longitude,town\ns1,40.7,-74.0,NYC\n")
    src = json.dumps({"kind": "files", "items_file": str(shops), "column_map": {"item_id": "shop", "lat": "latitude"}})
    rc = main(["materialize", "--home", str(tmp_path / "home"), "--source-json", src])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "items file lacks required column(s) ['lon', 'city']" in err and "column_map option" in err
    src = json.dumps({"kind": "files", "items_file": str(shops), "column_map": {"item_id": "store"}})
    assert main(["materialize", "--home", str(tmp_path / "home"), "--source-json", src]) == 2
    assert "column_map names columns ['store'] not present" in capsys.readouterr().err
    for command in (["sid", "x"], ["export", "--to", str(tmp_path / "e")], ["recommend", "--user", "u"]):
        assert main([command[0], "--home", str(tmp_path / "nowhere"), *command[1:]]) == 2
        assert "does not exist; run `lgsid materialize" in capsys.readouterr().err


def test_a_corrupted_codebook_manifest_is_one_line(tmp_path, capsys, monkeypatch):
    import polars as pl
    from deltalake import write_deltalake

    from resources import LgsidHome

    monkeypatch.delenv("LGSID_DEBUG", raising=False)
    home = LgsidHome(home=str(tmp_path / "home"))
    for table, frame in (("sid_table", pl.DataFrame({"item_id": ["a"], "method": ["m"], "sid": [[1, 0]],
                                                      "codebook_version": ["v1"], "city_key": ["c"]})),
                         ("item_catalog", pl.DataFrame({"item_id": ["a"], "city_key": ["c"]}))):
        write_deltalake(str(home.table_path(table)), frame.to_arrow(), partition_by=["city_key"])
    version = home.artifact_dir("sid_codebook", "v1")
    (version / "manifest.json").write_text('{"version": "v1", "vari')
    home.publish("sid_codebook", version)
    assert main(["sid", "--home", str(tmp_path / "home"), "a"]) == 2
    err = capsys.readouterr().err
    assert "the SID codebook manifest" in err and "is not valid JSON" in err and "Traceback" not in err
