"""How much of Origin's headroom each ladder row closes, from run_ladder.py JSON files.

Usage:
    .venv/bin/python -m benchmarks.ladder_headroom benchmarks/results/alignment/foursquare_ladder_seed0.json [...]

For each row: C@5 and T@5 headroom closed, ``(row - origin) / (1 - origin)``; the relative
Top@5 change; NMI against the city labels; the reward model's pair accuracy on the G-DPO pairs
and the step the held-out selection kept. A row meets the alignment criterion when both
headrooms closed are >= 30% with Top@5 down by at most 5% and NMI(city) up (the issue's
acceptance); the last column says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lgsid_pipeline.alignment.gdpo import GDPOConfig, headroom_closed as closed  # noqa: E402

CRITERION = 0.30  # the alignment issue's acceptance: both headrooms at least 30% closed
MAX_TOP_LOSS = GDPOConfig.max_top_loss  # the same Top@5 bound as G-DPO's step selection


def rows(result: dict) -> list[dict]:
    table = {r["variant"]: r for r in result["table"]}
    origin = table["Origin"]
    diag = result["diagnostics"]["rows"]
    out = []
    for name, r in table.items():
        g = diag.get(name, {}).get("gdpo", {})
        row = {"variant": name, "reward": diag.get(name, {}).get("reward_source", "-"),
               "c@5": r["c@5"], "t@5": r["t@5"], "top@5": r["top@5"], "nmi_city": r["nmi_city"],
               "c@5_closed": closed(r["c@5"], origin["c@5"]), "t@5_closed": closed(r["t@5"], origin["t@5"]),
               "top@5_change": r["top@5"] / origin["top@5"] - 1.0, "r_pair_acc": g.get("reference_pair_acc"),
               "kept_step": g.get("best_step")}
        row["meets"] = (name != "Origin" and row["c@5_closed"] >= CRITERION and row["t@5_closed"] >= CRITERION
                        and row["top@5_change"] >= -MAX_TOP_LOSS and r["nmi_city"] > origin["nmi_city"])
        out.append(row)
    return out


def markdown(result: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x * 100:+.0f}%"

    lines = ["| variant | reward | C@5 | T@5 | Top@5 | NMI city | C@5 headroom closed | T@5 headroom closed "
             "| Top@5 change | R pair acc | kept step | meets the criterion |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows(result):
        acc = "-" if r["r_pair_acc"] is None else f"{r['r_pair_acc']:.3f}"
        step = "-" if r["kept_step"] is None else str(r["kept_step"])
        lines.append(f"| {r['variant']} | {r['reward']} | {r['c@5']:.4f} | {r['t@5']:.4f} | {r['top@5']:.4f} | "
                     f"{r['nmi_city']:.4f} | {pct(r['c@5_closed'])} | {pct(r['t@5_closed'])} | "
                     f"{r['top@5_change'] * 100:+.1f}% | {acc} | {step} | {'yes' if r['meets'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="run_ladder.py --json outputs")
    args = ap.parse_args(argv)
    for path in args.json:
        result = json.loads(Path(path).read_text())
        print(f"### {Path(path).stem}\n\n{markdown(result)}\n")


if __name__ == "__main__":
    main()
