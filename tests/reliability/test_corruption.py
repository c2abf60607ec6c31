"""Corrupted artefacts give a clear error naming the file, never silently-used garbage.

Truncated files, damaged safetensors headers and broken JSON configs of the reward model, of
training checkpoints, of SID codebooks, of LoRA adapters and of Delta tables; and the
documented recovery (``docs/reliability.md``): delete the artefact and re-materialize / refit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from lgsid_pipeline.alignment.reward import RewardModel, load_reward_model, save_reward_model, train_reward_model


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_header(path: Path) -> None:
    """Damage the safetensors JSON header (bytes 8..40)."""
    data = bytearray(path.read_bytes())
    for i in range(8, min(40, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def bad_length_prefix(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "header-flipped": flip_header, "length-prefix": bad_length_prefix,
          "empty": lambda p: p.write_bytes(b"")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupted_reward_model_is_refused(tmp_path, damage, figures):
    torch.manual_seed(0)
    model_dir = save_reward_model(RewardModel(8, 4), tmp_path / "rm")
    DAMAGE[damage](model_dir / "reward_model.safetensors")
    with pytest.raises(ValueError, match="reward_model.safetensors"):
        load_reward_model(model_dir)
    # Recovery: delete the artefact and refit / re-materialize.
    shutil.rmtree(model_dir)
    save_reward_model(RewardModel(8, 4), model_dir)
    assert load_reward_model(model_dir).d == 8
    figures.add("corrupted artefacts refused with a clear error")


def test_corrupted_reward_config_is_refused(tmp_path, figures):
    model_dir = save_reward_model(RewardModel(8, 4), tmp_path / "rm")
    (model_dir / "reward_model.json").write_text('{"d": 8, "hid')
    with pytest.raises(ValueError, match="reward_model.json"):
        load_reward_model(model_dir)
    (model_dir / "reward_model.json").write_text('{"d": 16, "hidden": 4}')  # config / weights mismatch
    with pytest.raises(ValueError, match="do not match"):
        load_reward_model(model_dir)
    figures.add("corrupted artefacts refused with a clear error", 2)


def _reward_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(40, 5, 6, generator=g)
    labels = (5 - torch.stack([torch.randperm(5, generator=g) for _ in range(40)])).float()
    return E, labels


@pytest.mark.parametrize("target,damage", [("model.safetensors", "truncated"),
                                           ("optimizer.safetensors", "header-flipped"),
                                           ("state.json", "json")])
def test_corrupted_training_checkpoint_is_refused_then_recovered(tmp_path, target, damage, figures):
    torch.set_num_threads(1)
    E, labels = _reward_data()
    ckpt = tmp_path / "ckpt"
    train_reward_model(E, labels, epochs=2, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    path = ckpt / target
    if damage == "json":
        path.write_text(path.read_text()[:20])
    else:
        DAMAGE[damage](path)
    with pytest.raises(ValueError, match=target.replace(".", r"\.")):
        train_reward_model(E, labels, epochs=4, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    shutil.rmtree(ckpt)  # documented recovery: delete the checkpoint folder, train again
    res = train_reward_model(E, labels, epochs=4, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    figures.add("corrupted artefacts refused with a clear error")


def test_torn_temporary_file_is_ignored(tmp_path):
    """A run killed inside ``atomic_save_tensors`` leaves ``*.tmp``; the checkpoint stays valid."""
    E, labels = _reward_data()
    ckpt = tmp_path / "ckpt"
    train_reward_model(E, labels, epochs=2, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    (ckpt / "model.safetensors.tmp").write_bytes(b"\x00" * 17)
    (ckpt / "state.json.tmp").write_text("{")
    res = train_reward_model(E, labels, epochs=3, hidden=8, batch_size=8, checkpoint_dir=ckpt)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


@pytest.mark.parametrize("target,damage", [("tokenizer.safetensors", "truncated"),
                                           ("tokenizer.safetensors", "header-flipped"),
                                           ("tokenizer.json", "json")])
def test_corrupted_codebook_is_refused(tmp_path, target, damage, figures):
    from lgsid_pipeline.tokenizers import load_tokenizer
    from lgsid_pipeline.tokenizers.res_kmeans import ResKMeansTokenizer

    X = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    tok = ResKMeansTokenizer(codebook_sizes=[4, 4], levels=2, seed=0).fit(X)
    folder = tok.save(tmp_path / "tok")
    codes = tok.transform(X)
    path = Path(folder) / target
    if damage == "json":
        path.write_text(path.read_text()[:30])
    else:
        DAMAGE[damage](path)
    with pytest.raises(ValueError, match=target.replace(".", r"\.") + ".*refit"):
        load_tokenizer(folder)
    shutil.rmtree(folder)  # recovery: refit and save again
    ResKMeansTokenizer(codebook_sizes=[4, 4], levels=2, seed=0).fit(X).save(folder)
    np.testing.assert_array_equal(load_tokenizer(folder).transform(X), codes)
    figures.add("corrupted artefacts refused with a clear error")


def test_corrupted_lora_adapter_is_refused(tmp_path, figures):
    from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert
    from lgsid_pipeline.alignment.gdpo import GDPOConfig, build_preference_pairs, load_aligned_encoder, train_gdpo

    torch.set_num_threads(1)
    bert = build_tiny_bert(tmp_path / "bert")
    enc = TextEncoder(EncoderConfig(model_path=str(bert), device="cpu", max_length=32))
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(8)], "name": [f"shop {i}" for i in range(8)],
                          "city": ["a"] * 4 + ["b"] * 4, "town": ["t1", "t2"] * 4,
                          "lat": [1.0 + i for i in range(8)], "lon": [2.0] * 8})
    pairs = build_preference_pairs(items, None, seed=0)
    res = train_gdpo(enc, RewardModel(enc.dim, 4), items, pairs, GDPOConfig(batch_size=4, max_steps=2),
                     adapter_dir=tmp_path / "adapter")
    truncate(res.adapter_path / "adapter_model.safetensors", 0.3)
    with pytest.raises(ValueError, match="adapter"):
        load_aligned_encoder(enc.config, res.adapter_path)
    figures.add("corrupted artefacts refused with a clear error")


def test_corrupted_delta_data_file_fails_loudly(tmp_path, figures):
    from deltalake import write_deltalake

    from resources import LgsidHome

    home = LgsidHome(home=str(tmp_path / "home"))
    path = home.table_path("item_catalog")
    df = pl.DataFrame({"city_key": ["a"] * 5000 + ["b"] * 5000, "x": np.arange(10_000)})
    write_deltalake(str(path), df.to_arrow(), mode="overwrite", partition_by=["city_key"])
    victim = sorted(path.rglob("*.parquet"))[0]
    truncate(victim, 0.4)
    # It fails loudly, never returns a silently shorter table: the reader's Rust panic becomes a
    # ValueError naming the table and the recovery.
    with pytest.raises(ValueError, match=r"'item_catalog'.*Recovery: delete the table folder"):
        home.read("item_catalog")
    shutil.rmtree(path)  # recovery: delete the table, re-materialize its cities
    write_deltalake(str(path), df.to_arrow(), mode="overwrite", partition_by=["city_key"])
    assert home.read("item_catalog").height == 10_000
    figures.add("corrupted artefacts refused with a clear error")


def test_bit_flip_in_tensor_data_is_detected(tmp_path):
    model_dir = save_reward_model(RewardModel(8, 4), tmp_path / "rm")
    path = model_dir / "reward_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_reward_model(model_dir)


def test_a_zero_byte_last_delta_commit_is_refused_on_read_and_on_write(tmp_path, figures):
    """A crash during a commit can leave the newest _delta_log entry empty. delta-rs would read
    the previous version silently and the next write would replace the lost commit for good;
    the project refuses both, naming the file and the recovery."""
    import dagster as dg
    from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice
    from dagster_deltalake.io_manager import TableConnection
    from deltalake import DeltaTable, write_deltalake

    from resources import LgsidHome
    from resources.delta_io import DeltaLogError, RetryingDeltaLakePolarsTypeHandler

    home = LgsidHome(home=str(tmp_path / "home"))
    path = home.table_path("item_catalog")
    first = pl.DataFrame({"city_key": ["a"] * 3, "x": [1, 2, 3]})
    write_deltalake(str(path), first.to_arrow(), mode="overwrite", partition_by=["city_key"])
    write_deltalake(str(path), pl.DataFrame({"city_key": ["b"], "x": [4]}).to_arrow(), mode="append",
                    partition_by=["city_key"])
    last = sorted((path / "_delta_log").glob("*.json"))[-1]
    last.write_bytes(b"")  # the torn commit
    with pytest.raises(DeltaLogError, match=r"newest commit 00000000000000000001\.json is empty.*version 0"):
        home.read("item_catalog")
    handler = RetryingDeltaLakePolarsTypeHandler()
    table_slice = TableSlice(table="item_catalog", schema="lgsid", database="deltalake", partition_dimensions=[
        TablePartitionDimension(partition_expr="city_key", partitions=["c"])])
    conn = TableConnection(table_uri=str(path), storage_options={}, table_config=None)
    with pytest.raises(DeltaLogError, match="is empty"):
        handler.handle_output(dg.build_output_context(resource_config={"mode": None}, definition_metadata={}),
                              table_slice, pl.DataFrame({"city_key": ["c"], "x": [5]}), conn)
    assert last.stat().st_size == 0 and len(list((path / "_delta_log").glob("*.json"))) == 2  # nothing written
    # Recovery as documented: delete the empty commit (an explicit roll back to version 0).
    last.unlink()
    assert DeltaTable(str(path)).version() == 0
    assert home.read("item_catalog").sort("x").equals(first)
    figures.add("corrupted artefacts refused with a clear error")
