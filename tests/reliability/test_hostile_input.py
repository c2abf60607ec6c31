"""Hostile input cannot write outside the home, and nothing is ever unpickled.

- City names with ``../``, absolute paths, NUL bytes and very long names, materialized through
  the real data stage: every file written is under the home.
- Hostile partition keys and artefact names are refused by ``confine`` / ``LgsidHome``.
- The repository's Python sources never load pickle (``torch.load`` without
  ``weights_only=True``, ``pickle.load``, ``joblib.load``, ``np.load(allow_pickle=True)``, ...).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.data import catalog_assets, catalog_schema_and_coordinates, quarantine_rate
from lgsid_pipeline.partitions import confine, is_valid_city_key, sanitize_city_key, validate_city_key
from orchestration.definitions import build_resources
from resources import DataSource, LgsidHome

REPO = Path(__file__).resolve().parents[2]
ASSETS = [catalog_assets, catalog_schema_and_coordinates, quarantine_rate]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _hostile_cities(tmp_path: Path) -> list[str]:
    return ["../../escaped", "../../../../../../tmp/escaped-abs", str(tmp_path / "absolute-target"),
            "a\x00b", "n" * 5_000, "..", ".", "~", "日本", "city_key=x/y", "C:\\windows\\system32"]


def test_hostile_city_names_stay_inside_home(tmp_path, test_world, figures, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    sandbox = tmp_path / "cwd"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)  # relative escapes would land next to the cwd
    hostile = _hostile_cities(tmp_path)
    portland = test_world.items.filter(pl.col("city") == "Portland").head(len(hostile) * 3)
    bad = portland.with_columns(
        pl.Series("city", [hostile[i % len(hostile)] for i in range(portland.height)]),
        pl.lit(None, dtype=pl.Utf8).alias("province"),
        (pl.col("item_id") + "-h").alias("item_id"))
    items = pl.concat([test_world.items.filter(pl.col("city") != "Portland"), bad])
    items.write_parquet(data / "items.parquet")
    test_world.interactions.write_parquet(data / "interactions.parquet")
    source = DataSource(kind="folder", path=str(data))
    keys = source.city_keys()
    assert all(is_valid_city_key(k) for k in keys), keys
    assert len(keys) >= len(hostile)  # every hostile city is its own safe partition
    before = _files(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("city", keys)
    for key in keys:  # the data stage only: all-bad cities rightly fail their quarantine-rate check
        result = dg.materialize([catalog_assets], partition_key=key, instance=instance,
                                resources=build_resources(str(home), source), raise_on_error=False)
        assert result.success, key
    written = _files(tmp_path) - before
    assert written, "nothing was written"
    outside = [p for p in written if home.resolve() not in p.resolve().parents]
    assert not outside, outside
    assert not (tmp_path / "absolute-target").exists()
    assert not Path("/tmp/escaped-abs").exists()
    assert not any("escaped" in p.name for p in tmp_path.parent.iterdir())
    # The display names survive in the data; the keys are what reach the filesystem.
    store = LgsidHome(home=str(home))
    catalog = store.read("item_catalog")
    quarantine = store.read("catalog_quarantine")
    assert "../../escaped" in catalog["city"].to_list()
    assert catalog.height + quarantine.filter(pl.col("source").str.ends_with("items")).height == items.height
    # The NUL-byte and 5,000-character names are quarantined with a reason, not written as paths.
    reasons = set(quarantine["reason"].to_list())
    assert {"control_characters", "text_too_long"} <= reasons, reasons
    figures.add("hostile city names materialized inside home", len(hostile))


@pytest.mark.parametrize("key", ["../../etc", "/etc", "a\x00b", "x" * 200, "..", "", "ok/../../x", "UPPER"])
def test_hostile_partition_keys_are_refused(tmp_path, key, figures):
    home = tmp_path / "home"
    home.mkdir()
    instance = dg.DagsterInstance.ephemeral()
    source = DataSource(kind="generator", preset="test", seed=0)
    try:
        instance.add_dynamic_partitions("city", [key])
    except Exception:  # Dagster itself refuses some keys (NUL, empty): also fine
        figures.add("hostile partition keys refused")
        return
    before = _files(tmp_path)
    result = dg.materialize(ASSETS, partition_key=key, instance=instance,
                            resources=build_resources(str(home), source), raise_on_error=False)
    assert not result.success
    assert not [p for p in _files(tmp_path) - before if home.resolve() not in p.resolve().parents]
    assert not (home / "delta").exists() or not list((home / "delta").rglob("*.parquet"))
    figures.add("hostile partition keys refused")


def test_confine_and_home_refuse_escapes(tmp_path, figures):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    bad_parts = [("..",), ("a", "..", ".."), ("/etc",), (str(outside),), ("a\x00b",), ("link", "x"),
                 ("ok", "../../outside")]
    for parts in bad_parts:
        with pytest.raises(ValueError):
            confine(root, *parts)
    assert confine(root, "a", "b") == (root / "a" / "b").resolve()
    home = LgsidHome(home=str(tmp_path / "h" / ".." / "h2"))
    assert home.root() == (tmp_path / "h2").resolve()
    for parts in (("..", ".."), ("/abs",), ("a\x00",), ("x", "../../..")):
        with pytest.raises(ValueError):
            home.artifact_dir(*parts)
    for name in ("../../../x", "/x", "a/../../../../b"):
        with pytest.raises(ValueError):
            home.table_path(name)
    for key in ("../x", "X", "a" * 65, "a\x00", ""):
        with pytest.raises(ValueError):
            home.city_artifact_dir("sid", key)
    assert not list(outside.iterdir())
    # sanitize_city_key always yields a valid key, whatever the display name.
    for name in _hostile_cities(tmp_path) + ["", None, "-", "São Paulo", "a" * 10_000]:
        validate_city_key(sanitize_city_key(name))
    figures.add("hostile paths refused", len(bad_parts) + 11)


# -- no pickle anywhere ------------------------------------------------------------------------------
SOURCE_DIRS = ["lgsid_pipeline", "assets", "resources", "orchestration", "benchmarks", "scripts", "tests"]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Calls that may unpickle: returns ``file:line: call`` strings."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        short = name.split(".")[-1]
        mod = name.rsplit(".", 1)[0] if "." in name else ""
        bad = False
        if name in ("torch.load", "torch.serialization.load") and not _kw_true(node, "weights_only"):
            bad = True
        elif mod in ("pickle", "cPickle", "cloudpickle", "dill", "joblib", "_pickle") and short in (
                "load", "loads", "Unpickler"):
            bad = True
        elif name in ("np.load", "numpy.load") and _kw_true(node, "allow_pickle"):
            bad = True
        elif short in ("read_pickle", "Unpickler"):
            bad = True
        elif name in ("torch.jit.load", "shelve.open"):
            bad = True
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}(...)")
    return found


def test_detector_catches_unsafe_loads():
    snippet = ("import torch, pickle, joblib, numpy as np\n"
               "torch.load('a')\ntorch.load('b', weights_only=False)\npickle.load(f)\npickle.loads(b)\n"
               "joblib.load('m')\nnp.load('x', allow_pickle=True)\n"
               "torch.load('ok', weights_only=True)\nnp.load('ok')\n")
    assert len(unsafe_loads(snippet, "snippet.py")) == 6


def test_repository_never_unpickles(figures):
    files = [p for d in SOURCE_DIRS if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py")]
    assert len(files) > 20
    found = []
    for path in files:
        found += unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "pickle-capable loads found:\n" + "\n".join(found)
    # Model and codebook artefacts are written as safetensors / Parquet / JSON, never pickle files.
    text = "\n".join(p.read_text(encoding="utf-8") for p in files if "tests" not in p.parts)
    for suffix in ('.pkl"', '.pickle"', '.joblib"', '.pt"', '.pth"'):
        assert suffix not in text, f"a file name ending in {suffix} appears in the sources"
    figures.add("python files scanned for pickle loads", len(files))


def test_encoder_refuses_pickled_weights(tmp_path):
    """A model folder with only a pickled ``pytorch_model.bin`` never executes its pickle."""
    torch = pytest.importorskip("torch")
    from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder, build_tiny_bert

    path = build_tiny_bert(tmp_path / "bert")
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (path / "model.safetensors").unlink()
    with (path / "pytorch_model.bin").open("wb") as fh:
        pickle.dump({"state": state, "evil": Evil()}, fh)
    # The project's own guard refuses the folder (use_safetensors=True), naming safetensors; torch's
    # restricted unpickler alone would also stop this payload, so the refusal itself is checked.
    with pytest.raises(OSError, match="safetensors"):
        TextEncoder(EncoderConfig(model_path=str(path), device="cpu"))
    assert not marker.exists(), "loading the model folder executed a pickle payload"
    del torch
