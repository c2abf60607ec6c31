"""How much the bfloat16 encoder path moves a dataset's SIDs, against how much a tokenizer seed does.

    .venv/bin/python benchmarks/encoder_dtype_sids.py     # gowalla_nyc, ../shared/data

The same ranked items and methods on float32 and on ``dtype="auto"`` (bfloat16 here) origin
embeddings, seed 0. Label-free agreement: the adjusted Rand index of the items' SID prefixes (level 1, 1-2, 1-3),
and the share of float32 same-prefix pairs still sharing the 3-level prefix. The reference
is the ARI between tokenizer seeds 0 and 1 on the same float32 embeddings. Writes
benchmarks/results/speed/encoder_dtype_sids_gowalla_nyc.json.
"""
import json
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sid_shootout import (build_sids, load_dataset, origin_embeddings, parse_method,  # noqa: E402
                                     prefix_labels as groups, ranked_items)
from lgsid_pipeline.alignment.prompts import build_prompts
from lgsid_pipeline.recommenders.data import next_item_split
from lgsid_pipeline.recommenders.heuristics import item_counts
from lgsid_pipeline.tokenizers.base import default_codebook_sizes
ROOT = Path(__file__).resolve().parents[1]
data = ROOT.parent / "shared" / "data" / "gowalla_nyc"
items, inter = load_dataset(data)
split = next_item_split(inter, known_items=items["item_id"])
ranked = ranked_items(split, items)
prompts = build_prompts(ranked)
cache = ROOT / ".lgsid" / "shootout-cache"
X32 = origin_embeddings(prompts, cache, None, "float32")
X16 = origin_embeddings(prompts, cache, None, "auto")
cos = (X32 * X16).sum(1) / (np.linalg.norm(X32, axis=1) * np.linalg.norm(X16, axis=1))
out = {"items": len(prompts),
       "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "methods": {}}
sizes = default_codebook_sizes(split.n_items, 3)
for m in ("res_kmeans:origin", "hgit_geo_last:origin", "rqvae:origin"):
    codes = {}
    for name, X in (("float32", X32), ("auto", X16)):
        sids, fig = build_sids(parse_method(m, "item_id"), {"origin": X}, ranked, sizes, 3, item_counts(split, "valid"), 0)
        codes[name] = np.asarray(sids)
    a, b = codes["float32"], codes["auto"]
    from sklearn.metrics import adjusted_rand_score
    rec = {"raw_codes_equal_level_1": float((a[:, 0] == b[:, 0]).mean())}
    for l in range(1, a.shape[1]):
        rec[f"ari_prefix_{l}"] = float(adjusted_rand_score(groups(a, l), groups(b, l)))
    # same-prefix pairs kept: of the item pairs sharing the 3-level prefix under float32, the share still sharing it
    ga, gb = groups(a, 3), groups(b, 3)
    same = 0; tot = 0
    for g in np.unique(ga):
        idx = np.flatnonzero(ga == g)
        if idx.size < 2: continue
        sub = gb[idx]; _, cnt = np.unique(sub, return_counts=True)
        same += int((cnt * (cnt - 1) // 2).sum()); tot += idx.size * (idx.size - 1) // 2
    rec["prefix3_pairs_kept"] = same / max(tot, 1)
    # the reference: the same float32 embeddings, tokenizer seed 1 instead of 0
    s1, _ = build_sids(parse_method(m, "item_id"), {"origin": X32}, ranked, sizes, 3, item_counts(split, "valid"), 1)
    s1 = np.asarray(s1)
    for l in range(1, a.shape[1]):
        rec[f"ari_prefix_{l}_seed0_vs_seed1_float32"] = float(adjusted_rand_score(groups(a, l), groups(s1, l)))
    out["methods"][m] = rec
    print(m, out["methods"][m], flush=True)
print(json.dumps(out, indent=1))
(ROOT / "benchmarks" / "results" / "speed" / "encoder_dtype_sids_gowalla_nyc.json").write_text(json.dumps(out, indent=1) + "\n")
