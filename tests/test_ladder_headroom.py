"""The ladder's headroom table (benchmarks/ladder_headroom.py) on a hand-made result."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import ladder_headroom  # noqa: E402


def _row(name, c, t, top, nmi):
    return {"variant": name, "c@5": c, "t@5": t, "top@5": top, "nmi_city": nmi}


def test_headroom_closed_and_the_criterion():
    result = {"table": [_row("Origin", 0.8, 0.6, 0.9, 0.5), _row("good", 0.9, 0.8, 0.88, 0.6),
                        _row("top_loss", 0.9, 0.8, 0.8, 0.6), _row("half", 0.9, 0.62, 0.9, 0.6)],
              "diagnostics": {"rows": {"good": {"reward_source": "learned",
                                                "gdpo": {"reference_pair_acc": 0.7, "best_step": 16}}}}}
    rows = {r["variant"]: r for r in ladder_headroom.rows(result)}
    assert rows["good"]["c@5_closed"] == pytest.approx(0.5) and rows["good"]["t@5_closed"] == pytest.approx(0.5)
    assert rows["good"]["meets"] and not rows["Origin"]["meets"]
    assert not rows["top_loss"]["meets"]  # Top@5 -11% > 5%
    assert not rows["half"]["meets"]  # T@5 closes 5% only
    text = ladder_headroom.markdown(result)
    assert "| good | learned | 0.9000 | 0.8000 | 0.8800 | 0.6000 | +50% | +50% | -2.2% | 0.700 | 16 | yes |" in text
