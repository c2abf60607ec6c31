"""Shared fixtures: the small generated world and a throwaway pipeline home."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def test_world():
    from lgsid_pipeline.world.generator import generate_world

    return generate_world("test", seed=0)


@pytest.fixture
def landing_folder(tmp_path, test_world):
    """(base folder with the test world's items and interactions, empty landing folder)."""
    base, landing = tmp_path / "base", tmp_path / "landing"
    base.mkdir()
    landing.mkdir()
    test_world.items.write_parquet(base / "items.parquet")
    test_world.interactions.write_parquet(base / "interactions.parquet")
    return base, landing


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def one_torch_thread():
    """Pin torch to one thread for the test (small models; steadier timings on 2 cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def planted():
    """Planted next-item sequences with two SID methods, and their leave-one-out split."""
    from lgsid_pipeline.recommenders.data import next_item_split
    from lgsid_pipeline.recommenders.synthetic import planted_sequences

    d = planted_sequences(n_items=100, n_users=80, min_len=8, max_len=12, methods=("hgit", "rqvae"), seed=0)
    return d, next_item_split(d.interactions, min_core=0)


@pytest.fixture(autouse=True)
def _no_stale_defs_state_storage():
    """An ephemeral DagsterInstance that is never closed leaves its defs-state storage in a
    context variable; once the instance is garbage collected, the next Definitions built in
    the same process fails with "undefined DagsterInstance weakref" (so the suite depended on
    test order). Every test starts without that leftover (Dagster 1.13 internals)."""
    try:
        from dagster._core.storage.defs_state.base import _current_storage
    except ImportError:  # pragma: no cover - layout of another Dagster release
        yield
        return
    _current_storage.set(None)
    yield
