"""Paired over-users comparisons between any two finished shootout runs.

The shootout compares every method with its best baseline. This reads its saved runs
(``OUT.runs/*.npz``: per-user Hit@10 and NDCG@10 in validation, test and the local ranking
mode) and compares chosen pairs on the same users, e.g. LGSID (HGIT on G-DPO-aligned
embeddings) against HGIT on origin embeddings:

    python -m benchmarks.shootout_pairs --runs benchmarks/results/shootout/gowalla_nyc_1500steps_seed0.runs \
        --pair hgit:aligned=hgit:origin --pair hgit_geo_last:aligned=hgit_geo_last:origin \
        --out benchmarks/results/shootout/gowalla_nyc_1500steps_seed0.pairs.json

Each run file holds one (method, seed); with several seeds the per-user scores are averaged
over the seeds both methods share, as the shootout does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lgsid_pipeline.recommenders.stats import paired_over_users

STAGES = ("valid", "test", "local")
METRICS = ("hit@10", "ndcg@10")


def load_runs(folder: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """{method: {seed: {stage: (2, users) array}}} of every saved run in ``folder``."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            record = json.loads(str(z["records"]))
            seed = int(record["tiger"]["seed"])
            out.setdefault(record["method"], {})[seed] = {s: np.asarray(z[s]) for s in STAGES if s in z.files}
    return out


def compare(runs: dict, variant: str, baseline: str) -> dict:
    for name in (variant, baseline):
        if name not in runs:
            raise SystemExit(f"error: no finished run of {name!r}; have {sorted(runs)}")
    seeds = sorted(set(runs[variant]) & set(runs[baseline]))
    if not seeds:
        raise SystemExit(f"error: {variant!r} and {baseline!r} share no seed")
    result = {"variant": variant, "baseline": baseline, "seeds": seeds}
    for stage in STAGES:
        if any(stage not in runs[m][s] for m in (variant, baseline) for s in seeds):
            continue
        a = np.mean([runs[variant][s][stage] for s in seeds], axis=0)
        b = np.mean([runs[baseline][s][stage] for s in seeds], axis=0)
        for i, metric in enumerate(METRICS):
            result[f"{stage}.{metric}"] = paired_over_users(a[i], b[i])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="the shootout's .runs folder")
    ap.add_argument("--pair", action="append", required=True, help="VARIANT=BASELINE (repeatable)")
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args(argv)
    runs = load_runs(Path(args.runs))
    results = []
    for pair in args.pair:
        variant, sep, baseline = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --pair wants VARIANT=BASELINE, got {pair!r}")
        r = compare(runs, variant, baseline)
        results.append(r)
        for key in [k for k in r if "." in k]:
            v = r[key]
            print(f"{variant} vs {baseline} {key}: {v['mean_variant']:.4f} vs {v['mean_baseline']:.4f}, "
                  f"diff {v['mean_diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] p={v['p']:.3g}")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": args.runs, "pairs": results}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
