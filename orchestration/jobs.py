"""Jobs: per-city refreshes (sensor, schedule) and the global refit of trained models."""

import dagster as dg

from assets import CITY_ASSET_KEYS

city_refresh_job = dg.define_asset_job(
    "city_refresh_job",
    selection=dg.AssetSelection.assets(*CITY_ASSET_KEYS),
    description="Refresh one city: catalog, training signals, embeddings (only new or changed "
                "items are encoded) and SIDs from the frozen codebook. Launched by the new-items "
                "sensor and the weekly schedule.",
    tags={"lgsid/kind": "city"},
)

# The refit jobs (global_refit_job and its stage jobs) live in orchestration/refit.py.


# -- Kubernetes: one pod per step, GPU nodes only for the encoder-bound steps ---------------------
# With LGSID_EXECUTOR=k8s the code location runs every job with dagster_k8s.k8s_job_executor and
# these defaults. deploy/k8s/run-config.k8s-executor.yaml holds the same mapping (the tests keep
# them equal); run config under `execution.config` is merged over it (dicts merge, lists and
# scalars replace), so a launch can change a limit without repeating the rest.
GPU_OPS = ("reward_model", "aligned_encoder", "item_embeddings")
"""Ops (single-asset ops of the same name) that run the text encoder and go to GPU nodes."""

CPU_STEP_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                                       "limits": {"memory": "16Gi"}}},
    "pod_spec_config": {"node_selector": {"lgsid.io/pool": "cpu"}},
}
GPU_STEP_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "4", "memory": "24Gi"},
                                       "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}},
    "pod_spec_config": {
        "node_selector": {"lgsid.io/pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
K8S_EXECUTOR_DEFAULTS = {
    "max_concurrent": 4,
    "step_k8s_config": CPU_STEP_K8S_CONFIG,
    "per_step_k8s_config": {op: GPU_STEP_K8S_CONFIG for op in GPU_OPS},
}
EXECUTORS = ("multiprocess", "in_process", "k8s")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def k8s_executor() -> dg.ExecutorDefinition:
    """``k8s_job_executor`` with :data:`K8S_EXECUTOR_DEFAULTS` (its own config schema, so run
    config can still add to or override the defaults)."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover - installed in the image and the dev extras
        raise RuntimeError("LGSID_EXECUTOR=k8s needs dagster-k8s (pip install 'dagster-k8s>=0.29,<0.30'; "
                           "the Docker image installs it)") from exc

    return k8s_job_executor.configured(
        lambda config: _merge(K8S_EXECUTOR_DEFAULTS, config or {}),
        name="lgsid_k8s",
        config_schema=k8s_job_executor.config_schema.config_type,
        description="One Kubernetes Job per step; reward_model, aligned_encoder and item_embeddings "
                    "on GPU nodes (lgsid.io/pool=gpu, nvidia.com/gpu: 1), every other step on the CPU pool.",
    )


def executor_from_env(name: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by ``name`` or ``$LGSID_EXECUTOR``: ``multiprocess`` (default),
    ``in_process`` or ``k8s`` (one pod per step, see :func:`k8s_executor`)."""
    import os

    choice = (name if name is not None else os.environ.get("LGSID_EXECUTOR", "")).strip().lower()
    if choice in ("", "multiprocess", "default"):
        return None  # Dagster's default: multiprocess (one run = one process tree / one pod)
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "k8s":
        return k8s_executor()
    raise ValueError(f"LGSID_EXECUTOR={choice!r} is not one of {', '.join(EXECUTORS)}")
