"""One home per default: the Appendix B table matches the code, and every asset config default
equals the core default it stands for."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
from torch import nn

from lgsid_pipeline import paper


def _defaults(obj) -> dict:
    """Every field or parameter default of a pydantic model (dg.Config), a dataclass, or a
    function or class signature (factories called)."""
    fields = getattr(obj, "model_fields", None)
    if fields is not None:  # dg.Config (pydantic)
        return {k: f.default for k, f in fields.items()}
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(obj)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return {k: p.default for k, p in inspect.signature(obj).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _resolve(home: str):
    """The default held at ``module:Name.attr`` (a dataclass field, a function or class
    parameter, a pydantic field) or ``module:NAME`` (a module constant)."""
    module, _, path = home.partition(":")
    obj = importlib.import_module(module)
    parts = path.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    return getattr(obj, parts[-1]) if len(parts) == 1 else _defaults(obj)[parts[-1]]


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.parametrize("row", paper.APPENDIX_B, ids=lambda s: s.name)
def test_every_appendix_b_default_is_the_table_value(row):
    assert row.homes, f"{row.name}: no home given"
    for home in row.homes:
        if home == "lgsid_pipeline.alignment.reward:RewardModel":
            from lgsid_pipeline.alignment.reward import RewardModel

            linear = [m for m in RewardModel(d=4).modules() if isinstance(m, nn.Linear)]
            assert len(linear) == row.ours, home
            continue
        assert _norm(_resolve(home)) == _norm(row.ours), f"{row.name}: {home} = {_resolve(home)!r}, table says {row.ours!r}"


def test_departures_say_why_and_followers_match_the_print():
    for row in paper.APPENDIX_B:
        if not row.follows_paper:
            assert row.why, f"{row.name} departs from the paper ({row.paper} -> {row.ours}) without a reason"
    assert paper.setting("beta (Eq. 6)").paper == 0.9
    assert not paper.setting("lambda (Eq. 8)").follows_paper  # 155 as printed, 0.2 used
    with pytest.raises(KeyError, match="known"):
        paper.setting("no such row")


def test_the_resolver_sees_a_changed_default(monkeypatch):
    """The check above can fail: a dataclass default moved away from the table is caught."""
    from lgsid_pipeline.alignment import gdpo

    changed = dataclasses.make_dataclass("GDPOConfig", [("beta", float, dataclasses.field(default=0.5))])
    monkeypatch.setattr(gdpo, "GDPOConfig", changed)
    row = paper.setting("beta (Eq. 6)")
    assert _resolve(row.homes[0]) != row.ours


# Asset config -> the core objects whose same-named defaults it must equal.
CORE_OF = {
    "assets.alignment:RewardModelConfig": ["lgsid_pipeline.alignment.stage:RewardSettings"],
    "assets.alignment:AlignedEncoderConfig": ["lgsid_pipeline.alignment.gdpo:GDPOConfig", "lgsid_pipeline.alignment.stage:PairSettings"],
    "assets.signals:NegativesConfig": ["lgsid_pipeline.alignment.stage:NegativeSettings"],
    "assets.signals:CooccurrenceConfig": ["lgsid_pipeline.alignment.cooccurrence:cooccurrence_pairs"],
    "assets.tokenization:CodebookConfig": ["lgsid_pipeline.tokenizers.hgit:HGITTokenizer"],
    "assets.evaluation:EvaluationConfig": ["lgsid_pipeline.recommenders.evaluate:EvaluationSettings",
                                           "lgsid_pipeline.recommenders.data:next_item_split"],
}
# Same-named fields that differ on purpose, each with its reason.
INTENDED = {
    ("assets.alignment:AlignedEncoderConfig", "eval_every"):
        "the pipeline evaluates held-out geography every PIPELINE_EVAL_EVERY steps; the library's GDPOConfig "
        "leaves it off so a bare call trains without the extra encoder passes",
    ("assets.alignment:AlignedEncoderConfig", "max_steps"):
        "GDPOConfig.max_steps caps steps inside train_gdpo; the asset's max_steps is PairSettings' D_mix "
        "budget (checked against PairSettings)",
    ("assets.evaluation:EvaluationConfig", "methods"): "None means every fitted variant in both",
    ("assets.evaluation:EvaluationConfig", "ours"):
        "the pipeline reports the IMP of its own method ('lgsid': HGIT on aligned embeddings); the library "
        "function, which may run without aligned embeddings, picks 'hgit' when present",
    ("assets.evaluation:EvaluationConfig", "jobs"):
        "the pipeline trains its independent runs in min(2, cores) worker processes; a library call runs "
        "inline unless asked",
}
SAME_NAME_ALIASES = {  # asset field -> core parameter of another name
    ("assets.alignment:AlignmentReportConfig", "max_queries"): "lgsid_pipeline.alignment.metrics:PIPELINE_MAX_QUERIES",
    ("assets.alignment:AlignmentReportConfig", "queries_floor"): "lgsid_pipeline.alignment.metrics:PIPELINE_QUERIES_FLOOR",
    ("assets.alignment:AlignedEncoderConfig", "eval_every"): "lgsid_pipeline.alignment.stage:PIPELINE_EVAL_EVERY",
    ("assets.tokenization:CodebookConfig", "admin_columns"): "lgsid_pipeline.tokenizers.hgit:ADMIN_COLUMNS",
}


def _core_defaults(target: str) -> dict:
    module, _, name = target.partition(":")
    return _defaults(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("asset_cfg", sorted(CORE_OF))
def test_asset_config_defaults_equal_the_core_defaults(asset_cfg):
    module, _, name = asset_cfg.partition(":")
    cfg = getattr(importlib.import_module(module), name)
    shared = 0
    for target in CORE_OF[asset_cfg]:
        core = _core_defaults(target)
        for field, info in cfg.model_fields.items():
            if field not in core or (asset_cfg, field) in INTENDED or (asset_cfg, field) in SAME_NAME_ALIASES:
                continue
            shared += 1
            assert _norm(info.default) == _norm(core[field]), (
                f"{asset_cfg}.{field} defaults to {info.default!r} but {target} to {core[field]!r}: "
                "point the asset at the core default (or list the difference in INTENDED with its reason)")
    assert shared >= 2, f"{asset_cfg}: fewer than two fields shared with {CORE_OF[asset_cfg]}: is the map stale?"


@pytest.mark.parametrize("key", sorted(SAME_NAME_ALIASES))
def test_asset_defaults_that_cite_a_core_constant(key):
    asset_cfg, field = key
    module, _, name = asset_cfg.partition(":")
    cfg = getattr(importlib.import_module(module), name)
    assert _norm(cfg.model_fields[field].default) == _norm(_resolve(SAME_NAME_ALIASES[key]))


# Core settings objects and the core functions they feed: same-named defaults must agree, so a
# direct call of the function trains what the pipeline trains.
CORE_PAIRS = [
    ("lgsid_pipeline.alignment.stage:RewardSettings", "lgsid_pipeline.alignment.reward:train_reward_model"),
    ("lgsid_pipeline.alignment.stage:NegativeSettings", "lgsid_pipeline.alignment.negatives:distance_ranked_negatives"),
    ("lgsid_pipeline.alignment.stage:PairSettings", "lgsid_pipeline.alignment.preference_pairs:build_preference_pairs"),
]


CORE_INTENDED = {
    ("lgsid_pipeline.alignment.stage:NegativeSettings", "far_share"):
        "the function's far pool is optional (far_items=None, a single-city call), so its share defaults "
        "to 0 with it; the pipeline passes both",
}


@pytest.mark.parametrize("pair", CORE_PAIRS, ids=lambda p: p[0].split(":")[1])
def test_core_settings_agree_with_the_functions_they_feed(pair):
    settings, function = (_core_defaults(t) for t in pair)
    shared = sorted(n for n in set(settings) & set(function) - {"seed"} if (pair[0], n) not in CORE_INTENDED)
    assert len(shared) >= 2, f"{pair}: the map is stale"
    for name in shared:
        assert _norm(settings[name]) == _norm(function[name]), (
            f"{pair[0]}.{name} = {settings[name]!r} but {pair[1]}({name}={function[name]!r})")
