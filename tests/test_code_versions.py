"""Every asset carries a code_version derived from the code it runs, so the UI can say what is
stale after a code change, and only what depends on the changed code."""

from assets import ALL_ASSETS
from assets import versions


def _fn(key: str):
    return next(a for a in ALL_ASSETS if key in {k.to_user_string() for k in a.keys}).op.compute_fn.decorated_fn


def test_every_asset_has_a_code_version():
    for a in ALL_ASSETS:
        for key, v in a.code_versions_by_key.items():
            assert v and len(v) == 12, key


def test_a_core_change_moves_exactly_the_assets_that_reach_it(monkeypatch):
    before = {k: versions.code_version(_fn(k)) for k in ("item_catalog", "sid_codebook", "sid_table",
                                                         "cooccurrence_pairs")}
    real = versions._module_source

    def edited(module: str) -> str:
        text = real(module)
        return text + "\n# an edit\n" if module == "lgsid_pipeline.tokenizers.hgit" else text

    monkeypatch.setattr(versions, "_module_source", edited)
    after = {k: versions.code_version(_fn(k)) for k in before}
    assert after["sid_codebook"] != before["sid_codebook"]
    assert after["sid_table"] != before["sid_table"]
    assert after["item_catalog"] == before["item_catalog"]
    assert after["cooccurrence_pairs"] == before["cooccurrence_pairs"]


def test_the_data_assets_see_the_validation_code_through_their_resource():
    _, core = versions.code_parts(_fn("item_catalog"))
    assert {"lgsid_pipeline.data.catalog", "lgsid_pipeline.data.sources"} <= set(core)
    own, _ = versions.code_parts(_fn("sid_codebook"))
    assert any("class CodebookConfig" in s or "Config(dg.Config)" in s for s in own)
