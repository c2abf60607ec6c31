"""Progress bars: tqdm on a terminal (LGSID_PROGRESS=bar), nothing at all otherwise."""

import io

import numpy as np

from lgsid_pipeline import progress


def test_bars_are_off_unless_asked(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.advance("x", 1, 3)
    assert not progress._BARS and capsys.readouterr().err == ""


def test_a_bar_shows_rate_and_closes_at_its_total(monkeypatch):
    monkeypatch.setenv(progress.ENV, "bar")
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    for i in range(1, 4):
        progress.advance("TIGER training", i, 3, unit="step", loss=0.5)
    assert "TIGER training" not in progress._BARS  # closed at its total
    text = err.getvalue()
    assert "TIGER training" in text and "/3" in text and "step/s" in text  # name, total, rate


def test_tiger_training_reports_its_steps(monkeypatch, planted):
    from lgsid_pipeline.recommenders.tiger import TigerConfig, train_tiger

    seen = []
    monkeypatch.setenv(progress.ENV, "bar")
    monkeypatch.setattr(progress, "advance", lambda what, done, total, **kw: seen.append((what, done, total)))
    import lgsid_pipeline.recommenders.tiger.train as tiger

    monkeypatch.setattr(tiger, "advance", progress.advance)
    d, split = planted
    import polars as pl

    train_tiger(split, d.sids.filter(pl.col("method") == "hgit"), TigerConfig(d_model=16, ff_dim=32, epochs=3, max_steps=4, max_seconds=None,
                                                   batch_size=64, max_valid_users=16, seed=0))
    steps = [s for w, s, t in seen if w == "TIGER training"]
    assert steps == [1, 2, 3, 4] and all(t == 4 for w, _, t in seen if w == "TIGER training")
    assert np.all(np.diff(steps) == 1)
