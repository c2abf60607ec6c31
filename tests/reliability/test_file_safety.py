"""Artefact writes: unique temp names, fsync before rename, one lock per artefact; corrupted
pointers and manifests give clear errors; weights load only from safetensors."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

from lgsid_pipeline import train_state
from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
from lgsid_pipeline.train_state import artefact_lock, atomic_save_tensors, atomic_write_text, load_tensors
from resources import LgsidHome


def test_atomic_write_fsyncs_before_rename_and_uses_unique_temp_names(tmp_path, monkeypatch):
    events, tmps = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])

    def replace(src, dst):
        events.append("replace")
        tmps.append(str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "state.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    atomic_save_tensors({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    assert target.read_text() == "two"
    assert torch.equal(load_tensors(tmp_path / "w.safetensors", "w")["w"], torch.ones(3))
    assert events[:2] == ["fsync", "replace"]  # the file reaches the disk before it is renamed in
    assert len(set(tmps)) == len(tmps) == 3  # no two writes share a temp name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "w.safetensors"]  # no temp left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_artefact_lock_makes_writers_take_turns_and_times_out_clearly(tmp_path):
    path = tmp_path / "ckpt"
    order = []

    def writer(name):
        with artefact_lock(path):
            order.append(f"{name}-in")
            time.sleep(0.2)
            order.append(f"{name}-out")

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[0][2:] == "in" and order[1] == order[0][:1] + "-out"  # never interleaved
    with artefact_lock(path):
        with pytest.raises(RuntimeError, match="another process has held the lock"):
            with artefact_lock(path, timeout=0.1):
                pass


def test_corrupted_current_pointer_and_manifest_are_clear_errors(tmp_path):
    import dagster as dg

    from assets.tokenization import read_manifest

    home = LgsidHome(home=str(tmp_path), tables_uri=None)
    version = home.artifact_dir("sid_codebook", "v1")
    home.publish("sid_codebook", version)
    (version / "manifest.json").write_text("{not json")
    with pytest.raises(dg.Failure, match=r"manifest.json is not valid JSON.*re-materialize sid_codebook"):
        read_manifest(home)
    pointer = home.artifact_dir("sid_codebook") / "current.json"
    pointer.write_text('{"path": ')
    with pytest.raises(ValueError, match=r"current.json is corrupted.*re-materialize 'sid_codebook'"):
        home.current("sid_codebook")
    pointer.write_text(json.dumps({"elsewhere": 1}))
    with pytest.raises(ValueError, match="current.json is corrupted"):
        home.current("sid_codebook")


def test_encoder_weights_load_only_from_safetensors(tmp_path):
    """A model folder holding only ``pytorch_model.bin`` (a pickle) is refused, not unpickled
    (without ``use_safetensors=True`` transformers would load it)."""
    from transformers import AutoModel

    safe = build_tiny_bert(tmp_path / "safe")
    TextEncoder(EncoderConfig(model_path=str(safe)))  # the safetensors folder loads
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in safe.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save(AutoModel.from_pretrained(str(safe)).state_dict(), pickled / "pytorch_model.bin")
    assert (pickled / "pytorch_model.bin").exists() and not (pickled / "model.safetensors").exists()
    with pytest.raises(OSError, match="safetensors"):
        TextEncoder(EncoderConfig(model_path=str(pickled)))


def test_checkpoints_are_written_under_their_lock(tmp_path, monkeypatch):
    seen = []
    real = train_state.artefact_lock

    def spy(path, *a, **k):
        seen.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(train_state, "artefact_lock", spy)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    train_state.save_checkpoint(tmp_path / "ck", model.state_dict(), opt, {"step": 1})
    assert seen == [tmp_path / "ck" / "checkpoint"]
    assert train_state.load_checkpoint(tmp_path / "ck") is not None
