"""benchmarks/shootout_pairs.py: paired comparisons read from saved shootout runs."""

import json

import numpy as np
import pytest

from benchmarks.shootout_pairs import compare, load_runs, main


def _save(folder, method, seed, hits):
    hits = np.asarray(hits, dtype=float)
    arr = np.stack([hits, hits / 2])
    np.savez(folder / f"{method.replace(':', '_')}-{seed}.npz", records=json.dumps({"method": method, "tiger": {"seed": seed}}),
             valid=arr, test=arr, local=arr[:, :3])


def test_pairs_over_shared_seeds_and_users(tmp_path):
    users = 400
    rng = np.random.default_rng(0)
    base = (rng.random(users) < 0.2).astype(float)
    better = np.maximum(base, (rng.random(users) < 0.2).astype(float))  # never worse, often better
    _save(tmp_path, "a:aligned", 0, better)
    _save(tmp_path, "b:origin", 0, base)
    _save(tmp_path, "b:origin", 1, base)  # a seed the variant lacks is not used
    runs = load_runs(tmp_path)
    r = compare(runs, "a:aligned", "b:origin")
    assert r["seeds"] == [0]
    v = r["valid.hit@10"]
    assert v["mean_diff"] == pytest.approx(better.mean() - base.mean())
    assert v["ci_low"] > 0 and v["users"] == users
    assert r["local.hit@10"]["users"] == 3
    same = compare(runs, "b:origin", "b:origin")["test.hit@10"]
    assert same["mean_diff"] == 0 and same["ci_low"] <= 0 <= same["ci_high"]
    with pytest.raises(SystemExit, match="no finished run"):
        compare(runs, "c", "b:origin")
    out = tmp_path / "pairs.json"
    assert main(["--runs", str(tmp_path), "--pair", "a:aligned=b:origin", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pairs"][0]["variant"] == "a:aligned"
