"""``code_version`` of every asset, derived from the code it runs.

An asset's version is a short hash of its own function's source, the ``assets.*`` helpers and
config classes it uses, the modules of the resources it takes, and the full source of every
core module (``lgsid_pipeline.*``) those reach, followed transitively through the core's own
imports. Change a line of ``lgsid_pipeline/tokenizers/hgit.py``
and ``sid_codebook`` and ``sid_table`` (which call into it) get new versions, so the UI marks
them stale ("code version changed"), while ``item_catalog`` keeps its version. Nothing is kept
by hand, so a version cannot be forgotten when the code changes.

Written here rather than taken from a library: Dagster stores and compares ``code_version``
but leaves computing it to the code location.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import types

import dagster as dg

CORE = "lgsid_pipeline"
ASSETS = "assets"
RESOURCES = "resources"


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return out


def _module_of(obj) -> str | None:
    if inspect.ismodule(obj):
        return obj.__name__
    return getattr(obj, "__module__", None)


@functools.cache
def _core_closure(module: str) -> frozenset[str]:
    """``module`` and every core module it references, transitively."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in sys.modules:
            continue
        seen.add(m)
        for obj in vars(sys.modules[m]).values():
            name = _module_of(obj)
            if name and name.startswith(CORE) and name not in seen:
                todo.append(name)
    return frozenset(seen)


@functools.cache
def _module_source(module: str) -> str:
    try:
        return inspect.getsource(sys.modules[module])
    except (OSError, TypeError):  # pragma: no cover - frozen or built-in
        return module


def code_parts(fn) -> tuple[list[str], list[str]]:
    """(sources of ``fn`` and the ``assets.*`` functions it calls, core modules reached), both sorted."""
    fn = inspect.unwrap(fn)
    seen_fns, sources, core = set(), [], set()
    todo = [fn]
    # the resources it takes (``source: DataSource``): their module and what it reaches of the core
    for hint in inspect.signature(fn).parameters.values():
        ann = hint.annotation
        if isinstance(ann, str):
            ann = fn.__globals__.get(ann.split("[")[0].split(".")[-1])
        mod = _module_of(ann) if inspect.isclass(ann) else None
        if mod and mod.startswith(ASSETS):  # its Config class: fields and defaults
            sources.append(inspect.getsource(ann))
        elif mod and mod.startswith(RESOURCES):
            sources.append(_module_source(mod))
            for obj in vars(sys.modules[mod]).values():
                name = _module_of(obj)
                if name and name.startswith(CORE):
                    core |= _core_closure(name)
    while todo:
        f = todo.pop()
        if id(f) in seen_fns:
            continue
        seen_fns.add(id(f))
        try:
            sources.append(inspect.getsource(f))
        except (OSError, TypeError):  # pragma: no cover
            continue
        g = getattr(f, "__globals__", {})
        for name in _names(f.__code__):
            obj = g.get(name)
            mod = _module_of(obj) if obj is not None else None
            if not mod:
                continue
            if mod.startswith(CORE):
                core |= _core_closure(mod)
            elif mod.startswith(ASSETS) and inspect.isfunction(obj):
                todo.append(obj)
            elif mod.startswith(ASSETS) and inspect.isclass(obj):  # a Config class: its fields and defaults
                sources.append(inspect.getsource(obj))
    return sorted(sources), sorted(core)


def code_version(fn) -> str:
    own, core = code_parts(fn)
    h = hashlib.sha256()
    for text in own:
        h.update(text.encode())
    for m in core:
        h.update(m.encode())
        h.update(_module_source(m).encode())
    return h.hexdigest()[:12]


def with_code_versions(defs: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Every asset with the ``code_version`` of the function that computes it."""
    out = []
    for a in defs:
        version = code_version(a.op.compute_fn.decorated_fn)
        out.extend(dg.map_asset_specs(lambda spec, v=version: spec.replace_attributes(code_version=v), [a]))
    return out
