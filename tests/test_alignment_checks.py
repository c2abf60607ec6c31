"""The two warning checks on the alignment: reward signal on the G-DPO pairs, and the
geography gain of the aligned embeddings over origin."""

import dagster as dg
import pytest

from assets.alignment import aligned_encoder_reward_signal, alignment_geography_gain
from lgsid_pipeline.alignment.verdicts import geography_gain_verdict, reward_signal_verdict

# Measured on gowalla_nyc (5-core items, demo G-DPO settings): geography fell.
GOWALLA = {"origin.top@5": 0.8425, "origin.c@5": 0.9016, "origin.t@5": 0.8777,
           "aligned.top@5": 0.8260, "aligned.c@5": 0.7865, "aligned.t@5": 0.7654}


def test_geography_gain_verdict():
    passed, detail = geography_gain_verdict(GOWALLA)
    assert not passed
    assert detail["relative_change.c@5"] == pytest.approx(0.7865 / 0.9016 - 1)
    gain = {**GOWALLA, "aligned.c@5": 0.95, "aligned.t@5": 0.90, "aligned.top@5": 0.82}
    assert geography_gain_verdict(gain)[0]  # top@5 -2.7%, within 5%
    assert not geography_gain_verdict({**gain, "aligned.top@5": 0.79})[0]  # -6.2%: too much semantics lost
    with pytest.raises(ValueError, match="lacks"):
        geography_gain_verdict({"origin.c@5": 1.0})


def test_reward_signal_verdict():
    assert not reward_signal_verdict({"reference_pair_acc": 0.406, "policy_pair_acc": 0.66})[0]
    assert reward_signal_verdict({"reference_pair_acc": 0.7, "policy_pair_acc": 0.9})[0]
    with pytest.raises(ValueError, match="reference_pair_acc"):
        reward_signal_verdict({})


def _run(asset_name, metadata, check):
    @dg.asset(name=asset_name)
    def stub():
        return dg.MaterializeResult(metadata=metadata)

    result = dg.materialize([stub, check], instance=dg.DagsterInstance.ephemeral())
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_checks_run_in_dagster_and_warn():
    ev = _run("alignment_report", GOWALLA, alignment_geography_gain)
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    ev = _run("alignment_report", {"origin.top@5": 0.9, "origin.c@5": 0.9, "origin.t@5": 0.8}, alignment_geography_gain)
    assert ev.passed  # origin only: nothing to compare
    ev = _run("aligned_encoder", {"reference_pair_acc": 0.8, "policy_pair_acc": 0.9}, aligned_encoder_reward_signal)
    assert ev.passed


def test_gc_outside_is_validated_at_launch():
    """A wrong scope fails when the run config is read, before any encoding or training."""
    from assets.alignment import AlignedEncoderConfig

    assert AlignedEncoderConfig().gc_outside == "town"
    assert AlignedEncoderConfig(gc_outside="city").gc_outside == "city"
    with pytest.raises(Exception, match="gc_outside must be 'town' or 'city'"):
        AlignedEncoderConfig(gc_outside="planet")
