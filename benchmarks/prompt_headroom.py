"""Origin's geography under each prompt template: how much headroom alignment has.

    .venv/bin/python -m benchmarks.prompt_headroom --data ../shared/data/gowalla_nyc --data demo \
        --out benchmarks/results/alignment/prompt_headroom.json

For every dataset and every (template, instruction) pair, the items' own prompts are encoded by
the frozen base encoder (Origin) and scored with the alignment report (Table 3's metrics):
P@5 / C@5 / T@5 (share of the 5 cosine neighbours in the same province / city / town), Top@5
(their mean similarity) and NMI against the city labels. ``headroom`` = 1 - C@5 (resp. T@5) is
what G-DPO can still gain. The items are the ones the recommender ranks (the README's 5-core
split) for a real dataset, and the whole catalogue for the demo world. Also reported: the share
of items whose prompts are byte-identical (no text encoder can separate them) and, on the
distance-ranked negative lists the reward model trains on, the share of mismatched prompts that
render like an earlier prompt of their list (left out by ``dedupe_prompt_lists``).

Origin embeddings are cached on disk by the prompts' hash (the shootout's cache), so a rerun
costs only the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sid_shootout import load_dataset, origin_embeddings, ranked_items  # noqa: E402
from lgsid_pipeline.alignment.metrics import alignment_report  # noqa: E402
from lgsid_pipeline.alignment.negatives import dedupe_prompt_lists, distance_ranked_negatives, mismatched_prompts  # noqa: E402
from lgsid_pipeline.alignment.prompts import TEMPLATE_LINES, build_prompts, prompt_template  # noqa: E402
from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402
from lgsid_pipeline.tokenizers.dedup import collision_figures  # noqa: E402

VARIANTS = [(name, instr) for name in TEMPLATE_LINES for instr in (False, True)]


def load_items(data: str) -> pl.DataFrame:
    if data in ("demo", "test"):
        from lgsid_pipeline.world.generator import generate_world

        items = generate_world(data, seed=0).items
    else:
        items, inter = load_dataset(Path(data))
        items = ranked_items(next_item_split(inter, known_items=items["item_id"]), items)
    items = items.filter(pl.col("lat").is_not_null() & pl.col("lon").is_not_null())
    if "city_key" not in items.columns:
        items = items.with_columns(pl.col("city").fill_null("unknown").alias("city_key"))
    return items


def run(data: str, cache: Path, encoder: str | None, anchors: int) -> dict:
    items = load_items(data)
    import numpy as np

    lists = distance_ranked_negatives(items, k=15, seed=0, max_anchors=anchors).lists
    rows = {}
    for name, instr in VARIANTS:
        t0 = time.perf_counter()
        template = prompt_template(name, instr)
        prompts = build_prompts(items, template=template)
        X = origin_embeddings(prompts, cache, encoder)
        rep = alignment_report({"origin": X}, items, ks=(5,), group_col=None).table
        r = rep.filter(pl.col("scope") == "overall").to_dicts()[0]
        _, dd = dedupe_prompt_lists(mismatched_prompts(items, lists, template))
        key = f"{name}{'+instruction' if instr else ''}"
        rows[key] = {
            "template": name, "instruction": instr,
            **{m: float(r[m]) for m in ("p@5", "c@5", "t@5", "top@5", "nmi_city") if m in r},
            "headroom_c@5": 1.0 - float(r["c@5"]), "headroom_t@5": 1.0 - float(r["t@5"]),
            "identical_prompt_share": collision_figures(np.zeros((items.height, 1), dtype=np.int64),
                                                        prompts=prompts)["identical_prompt_share"],
            "negatives_duplicate_share": dd["duplicate_share"], "kept_list_len_median": dd["kept_list_len_median"],
            "seconds": time.perf_counter() - t0,
        }
        print(f"{Path(data).name:>14} {key:<26} C@5 {r['c@5']:.4f}  T@5 {r['t@5']:.4f}  "
              f"top@5 {r['top@5']:.4f}  dup-negatives {dd['duplicate_share']:.3f}", flush=True)
    return {"dataset": Path(data).name, "n_items": items.height, "anchors_per_city": anchors, "variants": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| dataset | template | P@5 | C@5 | T@5 | Top@5 | NMI city | C@5 headroom | T@5 headroom "
             "| identical prompts | same-text negatives left out |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for key, r in res["variants"].items():
            lines.append(f"| {res['dataset']} | {key} | {r['p@5']:.4f} | {r['c@5']:.4f} | {r['t@5']:.4f} | "
                         f"{r['top@5']:.4f} | {r['nmi_city']:.4f} | {r['headroom_c@5']:.4f} | "
                         f"{r['headroom_t@5']:.4f} | {r['identical_prompt_share']:.4f} | "
                         f"{r['negatives_duplicate_share']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="dataset folder, or 'demo'; repeatable")
    ap.add_argument("--out", default=None, help="JSON file; a markdown table is written beside it")
    ap.add_argument("--cache", default=str(ROOT / ".lgsid" / "shootout-cache"))
    ap.add_argument("--encoder", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--anchors", type=int, default=200, help="negative-list anchors per city for the dedupe share")
    args = ap.parse_args(argv)
    results = [run(d, Path(args.cache), args.encoder, args.anchors) for d in args.data]
    table = markdown(results)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1, default=float))
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
