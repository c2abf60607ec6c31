"""The TIGER speed benchmark runs end to end on tiny data and reports every figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_tiger  # noqa: E402
from lgsid_pipeline.alignment.encoder import build_tiny_bert  # noqa: E402
from tests.test_sid_shootout import tiny_dataset  # noqa: E402


def test_bench_tiger_reports_ratios_and_validity(tmp_path):
    data = tiny_dataset(tmp_path / "tiny")
    bert = build_tiny_bert(tmp_path / "bert")
    out = tmp_path / "speed.json"
    res = bench_tiger.main(["--data", str(data), "--steps", "4", "--users", "40", "--threads", "1",
                            "--encoder", str(bert), "--cache", str(tmp_path / "cache"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["train"]["ratio"] > 0 and saved["rank"]["ratio"] > 0
    # the same weights through both paths give the same top-10
    assert saved["rank"]["same_top10"] == 1.0
    share = saved["unconstrained_valid_share"]
    assert 0.0 <= share["top1"] <= 1.0 and 0.0 <= share["all_beams"] <= 1.0
    assert set(saved["valid_hit@10"]) >= {"reference", "fast"}
    assert res["rank"]["users"] == 40
