"""SIGKILL a training run after its first checkpoint; the re-run resumes from the last checkpoint.

Reward model (Eq. 2-4) and G-DPO (Eq. 6-8, tiny BERT) are trained in a child process that is
killed at a random moment after its first checkpoint. The re-run (same arguments, same
``checkpoint_dir``) continues the step counter where the checkpoint left it and ends with the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

PYTHON = sys.executable

REWARD_CHILD = r'''
import sys, time, torch
torch.set_num_threads(1)
import lgsid_pipeline.alignment.reward as R
_save = R.save_checkpoint
def slow_save(*a, **k):  # checkpoint as usual, then pause so the parent can kill mid-run
    _save(*a, **k)
    time.sleep(0.05)
R.save_checkpoint = slow_save
data = R.load_tensors(__import__("pathlib").Path(sys.argv[1]), "data")
R.train_reward_model(data["E"], data["labels"], epochs=int(sys.argv[3]), hidden=16, batch_size=16,
                     seed=3, checkpoint_dir=sys.argv[2])
print("finished", flush=True)
'''

GDPO_CHILD = r'''
import sys, time, json, torch, polars as pl
torch.set_num_threads(1)
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder
from lgsid_pipeline.alignment.gdpo import GDPOConfig, train_gdpo
from lgsid_pipeline.alignment.reward import load_reward_model
bert, rm_dir, items_path, pairs_path, ckpt, cfg_json = sys.argv[1:7]
enc = TextEncoder(EncoderConfig(model_path=bert, device="cpu", max_length=48))
cfg = GDPOConfig(**json.loads(cfg_json))
train_gdpo(enc, load_reward_model(rm_dir), pl.read_parquet(items_path), pl.read_parquet(pairs_path), cfg,
           checkpoint_dir=ckpt, progress=lambda rec: time.sleep(0.15))
print("finished", flush=True)
'''


def _kill_after_checkpoint(cmd, state_file: Path, min_progress: int, key: str, env, rng,
                           timeout: float = 240.0) -> dict:
    """Start ``cmd``; SIGKILL it at a random moment once ``state_file`` shows ``key >= min_progress``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"training finished or crashed before the kill (rc={proc.returncode}): {err[-2000:]}")
            if state_file.is_file():
                try:
                    if json.loads(state_file.read_text())[key] >= min_progress:
                        break
                except (ValueError, KeyError):
                    pass
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared in time")
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return json.loads(state_file.read_text())


def test_reward_training_resumes_after_sigkill(tmp_path, child_env, figures):
    from lgsid_pipeline.alignment.reward import train_reward_model
    from lgsid_pipeline.train_state import atomic_save_tensors

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, k1, d, epochs = 96, 6, 12, 40
    E = torch.randn(a, k1, d, generator=g)
    ranks = torch.stack([torch.randperm(k1, generator=g) for _ in range(a)])
    labels = (k1 - ranks).float()
    E = E + 0.5 * labels.unsqueeze(-1) / k1  # a learnable signal
    data = tmp_path / "data.safetensors"
    atomic_save_tensors({"E": E, "labels": labels}, data)
    ckpt = tmp_path / "ckpt"
    rng = random.Random(7)
    state = _kill_after_checkpoint([PYTHON, "-c", REWARD_CHILD, str(data), str(ckpt), str(epochs)],
                                   ckpt / "state.json", 2, "epoch", child_env, rng)
    done = state["epoch"]
    assert 2 <= done < epochs
    resumed = train_reward_model(E, labels, epochs=epochs, hidden=16, batch_size=16, seed=3, checkpoint_dir=ckpt)
    assert [h["epoch"] for h in resumed.history] == list(range(1, epochs + 1))
    assert resumed.history[:done] == state["history"]  # the pre-kill epochs were kept, not redone
    steps_per_epoch = -(-resumed.metrics["n_train"] // 16)
    assert resumed.metrics["steps"] == epochs * steps_per_epoch  # step counter continued
    clean = train_reward_model(E, labels, epochs=epochs, hidden=16, batch_size=16, seed=3,
                               checkpoint_dir=tmp_path / "clean")
    for k, v in clean.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-5, rtol=1e-4)
    assert np.isfinite([h["loss"] for h in resumed.history]).all()
    figures.add("training runs killed and resumed")


def _gdpo_items() -> pl.DataFrame:
    rows = []
    towns = {"new york": ["brooklyn", "queens"], "phoenix": ["central", "north"]}
    kinds = ["pizza", "coffee", "sushi", "tea"]
    for ci, (city, ts) in enumerate(towns.items()):
        for ti, town in enumerate(ts):
            for k in range(6):
                rows.append({"item_id": f"i{len(rows)}", "name": f"{town} {kinds[k % 4]} shop", "cat1": "food",
                             "cat2": kinds[k % 4], "cat3": None, "brand": None, "price": float(k),
                             "province": "state", "city": city, "district": None, "town": town,
                             "lat": 40.0 + 3 * ci + 0.1 * ti + 0.01 * k, "lon": -70.0 - 3 * ci,
                             "goods": None, "top_sellers": None})
    return pl.DataFrame(rows)


def test_gdpo_training_resumes_after_sigkill(tmp_path, child_env, figures):
    from safetensors.torch import load_file

    from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
    from lgsid_pipeline.alignment.gdpo import GDPOConfig, build_preference_pairs, train_gdpo
    from lgsid_pipeline.alignment.reward import RewardModel, save_reward_model

    torch.set_num_threads(1)
    bert = build_tiny_bert(tmp_path / "bert", seed=0)
    encoder = TextEncoder(EncoderConfig(model_path=str(bert), device="cpu", max_length=48))
    items = _gdpo_items()
    pairs = build_preference_pairs(items, None, seed=0)
    items.write_parquet(tmp_path / "items.parquet")
    pairs.write_parquet(tmp_path / "pairs.parquet")
    torch.manual_seed(0)
    rm_dir = save_reward_model(RewardModel(encoder.dim, 16), tmp_path / "rm")
    cfg = {"lr": 2e-2, "batch_size": 4, "epochs": 2, "seed": 0, "checkpoint_every": 2, "eval_pairs": 16}
    total = 2 * (-(-pairs.height // 4))
    ckpt = tmp_path / "ckpt"
    state = _kill_after_checkpoint(
        [PYTHON, "-c", GDPO_CHILD, str(bert), str(rm_dir), str(tmp_path / "items.parquet"),
         str(tmp_path / "pairs.parquet"), str(ckpt), json.dumps(cfg)],
        ckpt / "state.json", 2, "step", child_env, random.Random(11))
    done = state["step"]
    assert 2 <= done < total and done % 2 == 0
    from lgsid_pipeline.alignment.reward import load_reward_model

    resumed = train_gdpo(encoder, load_reward_model(rm_dir), items, pairs, GDPOConfig(**cfg), checkpoint_dir=ckpt)
    assert resumed.metrics["steps"] == total
    assert resumed.metrics["steps_this_run"] == total - done  # continued, not restarted
    assert [h["step"] for h in resumed.history] == list(range(1, total + 1))
    assert all(np.isfinite([h["total"] for h in resumed.history]))
    clean = train_gdpo(encoder, load_reward_model(rm_dir), items, pairs, GDPOConfig(**cfg),
                       checkpoint_dir=tmp_path / "clean")
    a = load_file(str(clean.adapter_path / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    figures.add("training runs killed and resumed")
