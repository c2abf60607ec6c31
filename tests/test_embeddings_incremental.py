"""The incremental item-embedding step: unchanged items keep their stored vectors, only new or
changed prompts (or a new encoder version) are encoded."""

import numpy as np
import polars as pl

from lgsid_pipeline.alignment.embeddings import EMBEDDING_COLUMNS, current_items, embed_variant, prompt_hash


class CountingEncoder:
    """Encodes a text as [len(text), call number]: which texts were encoded, and when, is visible."""
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), len(self.calls)] for t in texts], dtype=np.float32).reshape(len(texts), 2)


CATALOG = pl.DataFrame({"item_id": ["a", "b", "c"], "city_key": ["x", "x", "y"]})


def test_prompt_hash_is_a_content_key():
    h = prompt_hash(["cafe", "cafe", "bar"])
    assert h[0] == h[1] != h[2] and all(len(v) == 16 for v in h)


def test_first_run_encodes_everything_then_only_what_changed():
    enc = CountingEncoder()
    prompts = ["cafe", "bar", "pizza place"]
    first = embed_variant(current_items(CATALOG, prompts), prompts, None, variant="origin", version="v1",
                          identity={"model": "m"}, encode=enc)
    assert enc.calls == [prompts] and first.n_encoded == 3
    assert first.encoded == {"x": 2, "y": 1} and first.reused == {"x": 0, "y": 0}
    assert first.rows.columns == list(EMBEDDING_COLUMNS)
    assert first.rows["encoder_identity"].unique().to_list() == ['{"model": "m"}']

    # b's prompt changed and d is new: only those two are encoded, a and c keep call-1 vectors.
    catalog = pl.concat([CATALOG, pl.DataFrame({"item_id": ["d"], "city_key": ["y"]})])
    prompts2 = ["cafe", "bar & grill", "pizza place", "tea"]
    second = embed_variant(current_items(catalog, prompts2), prompts2, first.rows, variant="origin",
                           version="v1", identity={"model": "m"}, encode=enc)
    assert enc.calls[1] == ["bar & grill", "tea"]
    vec = {r["item_id"]: r["embedding"] for r in second.rows.iter_rows(named=True)}
    assert vec == {"a": [4.0, 1.0], "b": [11.0, 2.0], "c": [11.0, 1.0], "d": [3.0, 2.0]}
    assert second.encoded == {"x": 1, "y": 1} and second.reused == {"x": 1, "y": 1}


def test_another_variant_or_encoder_version_reencodes():
    enc = CountingEncoder()
    prompts = ["cafe", "bar", "pizza place"]
    cur = current_items(CATALOG, prompts)
    stored = embed_variant(cur, prompts, None, variant="origin", version="v1", identity={}, encode=enc).rows
    assert embed_variant(cur, prompts, stored, variant="aligned", version="v1", identity={},
                         encode=enc).n_encoded == 3
    assert embed_variant(cur, prompts, stored, variant="origin", version="v2", identity={},
                         encode=enc).n_encoded == 3
    nothing = embed_variant(cur, prompts, stored, variant="origin", version="v1", identity={}, encode=enc)
    assert nothing.n_encoded == 0 and enc.calls[-1] == [] and nothing.rows.height == 3
    assert nothing.rows["embedding"].dtype == pl.List(pl.Float32)
