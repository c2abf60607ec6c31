"""Kubernetes configuration: validated against dagster / dagster-k8s schemas and rendered into
Kubernetes Job objects locally, without a cluster."""

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is part of the dev extras")
from dagster_k8s import K8sRunLauncher, k8s_job_executor  # noqa: E402
from dagster_k8s.container_context import K8sContainerContext  # noqa: E402
from dagster_k8s.job import (  # noqa: E402
    USER_DEFINED_K8S_CONFIG_KEY,
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
GPU_ASSETS = {"reward_model", "aligned_encoder", "item_embeddings"}


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


# The chart's instance template (helm/dagster/templates/helpers/instance/) maps these values
# one to one; fields Helm fills from the release are given as in dagster.k8s.yaml.
LAUNCHER_FIELDS = {
    "loadInclusterConfig": "load_incluster_config", "kubeconfigFile": "kubeconfig_file",
    "jobNamespace": "job_namespace", "imagePullPolicy": "image_pull_policy",
    "envVars": "env_vars", "volumeMounts": "volume_mounts", "volumes": "volumes", "labels": "labels",
    "resources": "resources", "schedulerName": "scheduler_name", "securityContext": "security_context",
}
RUN_K8S_FIELDS = {
    "containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}


def render_instance(values: dict, release: str = "lgsid", namespace: str = "lgsid") -> dict:
    """The parts of the chart's instance ConfigMap that our values set (no Helm needed)."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    cfg = {snake: launcher[camel] for camel, snake in LAUNCHER_FIELDS.items() if launcher.get(camel)}
    cfg.setdefault("job_namespace", namespace)
    cfg.update({
        "service_account_name": f"{release}-dagster",
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{release}-dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    })
    if launcher.get("envConfigMaps"):
        cfg["env_config_maps"] = [c["name"] for c in launcher["envConfigMaps"] if "name" in c]
    if launcher.get("envSecrets"):
        cfg["env_secrets"] = [s["name"] for s in launcher["envSecrets"] if "name" in s]
    if launcher.get("failPodOnRunFailure"):
        cfg["fail_pod_on_run_failure"] = True
    if launcher.get("runK8sConfig"):
        cfg["run_k8s_config"] = {RUN_K8S_FIELDS[k]: v for k, v in launcher["runK8sConfig"].items() if v}
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = {k: queued[c] for c, k in (("maxConcurrentRuns", "max_concurrent_runs"),
                                             ("tagConcurrencyLimits", "tag_concurrency_limits")) if c in queued}
    runs = values.get("concurrency", {}).get("runs", {})
    pools = values.get("concurrency", {}).get("pools", {})
    concurrency = {}
    if pools:
        concurrency["pools"] = {"default_limit": pools["defaultLimit"]}
    if runs:
        concurrency["runs"] = {"max_concurrent_runs": runs["maxConcurrentRuns"],
                               "tag_concurrency_limits": runs["tagConcurrencyLimits"]}
    if queued.get("dequeueIntervalSeconds"):
        coordinator["dequeue_interval_seconds"] = queued["dequeueIntervalSeconds"]
    pg = values["postgresql"]
    return {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": cfg},
        "run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator", "config": coordinator},
        "concurrency": concurrency,
        "postgres": {"hostname": pg["postgresqlHost"], "username": pg["postgresqlUsername"],
                     "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
                     "scheme": pg.get("postgresqlScheme") or "postgresql"},
        "compute_logs": values["computeLogManager"]["config"]["s3ComputeLogManager"],
    }


def validate_class_config(entry: dict):
    cls = getattr(importlib.import_module(entry["module"]), entry["class"])
    result = validate_config(cls.config_type(), entry.get("config") or {})
    assert result.success, [e.message for e in result.errors]
    return result.value


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return load("dagster.k8s.yaml")


def test_instance_yaml_validates(tmp_path, monkeypatch, instance_yaml):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "secret")
    shutil.copy(K8S / "dagster.k8s.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = validate_class_config(config["run_launcher"])
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert launcher["load_incluster_config"] is True
    validate_class_config(config["run_coordinator"])
    assert config["compute_logs"]["module"] == "dagster_aws.s3.compute_log_manager"
    if importlib.util.find_spec("dagster_aws") is not None:  # installed in the image, not in dev
        validate_class_config(config["compute_logs"])


def test_launcher_config_is_checked():
    """The validation above can fail: K8sRunLauncher requires instance_config_map."""
    bad = {"job_namespace": "lgsid", "load_incluster_config": True}
    assert not validate_config(K8sRunLauncher.config_type(), bad).success
    typo = {"instance_config_map": "x", "job_namespce": "lgsid"}
    assert not validate_config(K8sRunLauncher.config_type(), typo).success


def test_helm_values_render_to_the_instance_yaml(instance_yaml):
    values = load("values.yaml")
    rendered = render_instance(values)
    assert rendered["run_launcher"] == instance_yaml["run_launcher"]
    assert rendered["run_coordinator"] == instance_yaml["run_coordinator"]
    assert rendered["concurrency"] == instance_yaml["concurrency"]
    validate_class_config(rendered["run_launcher"])
    validate_class_config(rendered["run_coordinator"])
    pg = instance_yaml["storage"]["postgres"]["postgres_db"]
    assert {k: pg[k] for k in ("hostname", "username", "db_name", "port", "scheme")} == rendered["postgres"]
    assert instance_yaml["compute_logs"]["config"] == rendered["compute_logs"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"

    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions", "-a", "defs"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {e["name"]: e["value"] for e in deployment["env"]}
    mounts = {m["mountPath"]: m["name"] for m in deployment["volumeMounts"]}
    assert mounts[env["LGSID_HOME"]] == "lgsid-home"
    assert deployment["volumes"][0]["persistentVolumeClaim"]["claimName"] == "lgsid-home"


def test_tag_limits_serialise_training_and_parallelise_cities(instance_yaml, tmp_path, monkeypatch):
    runs = instance_yaml["concurrency"]["runs"]
    limits = {(lim["key"], lim["value"]): lim["limit"] for lim in runs["tag_concurrency_limits"]}
    assert limits[("lgsid/kind", "training")] == 1
    assert limits[("lgsid/kind", "city")] > 1
    assert runs["max_concurrent_runs"] >= limits[("lgsid/kind", "city")] + 1
    assert instance_yaml["concurrency"]["pools"]["default_limit"] == 1
    # Dagster reads them: run limits from concurrency.runs, the pools' default limit
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "secret")
    shutil.copy(K8S / "dagster.k8s.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert "max_concurrent_runs" not in config["run_coordinator"]["config"]


def _job_config(instance_yaml) -> DagsterK8sJobConfig:
    cfg = dict(instance_yaml["run_launcher"]["config"])
    keep = set(DagsterK8sJobConfig._fields)
    return DagsterK8sJobConfig(job_image="registry.example.com/lgsid:0.1.0",
                               **{k: v for k, v in cfg.items() if k in keep})


def _pod(job):
    return job.spec.template.spec


def test_gpu_op_tags_parse_and_render_onto_gpu_nodes(instance_yaml):
    tags = load("gpu-op-tags.yaml")
    assert set(tags["op_tags"]) == GPU_ASSETS
    launcher_k8s = UserDefinedDagsterK8sConfig.from_dict(instance_yaml["run_launcher"]["config"]["run_k8s_config"])
    for asset, op_tags in tags["op_tags"].items():
        # Dagster stores a dict-valued tag as its JSON string; that is what dagster-k8s reads.
        step_k8s = get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(op_tags[USER_DEFINED_K8S_CONFIG_KEY])})
        merged = K8sContainerContext(run_k8s_config=launcher_k8s).merge(
            K8sContainerContext(run_k8s_config=step_k8s)).run_k8s_config
        job = construct_dagster_k8s_job(_job_config(instance_yaml), ["dagster", "api", "execute_step"],
                                        f"dagster-step-{asset.replace('_', '-')}", user_defined_k8s_config=merged)
        pod = _pod(job)
        assert pod.node_selector == {"lgsid.io/pool": "gpu"}, asset  # the step overrides the CPU pool
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
        limits = pod.containers[0].resources.limits
        assert limits["nvidia.com/gpu"] == "1"
        assert job.spec.ttl_seconds_after_finished == 86400  # launcher defaults still apply
    # A CPU run pod gets the launcher defaults only.
    job = construct_dagster_k8s_job(_job_config(instance_yaml), ["dagster", "api", "execute_run"],
                                    "dagster-run-city", user_defined_k8s_config=launcher_k8s)
    assert _pod(job).node_selector == {"lgsid.io/pool": "cpu"}
    assert not _pod(job).tolerations
    assert "nvidia.com/gpu" not in (_pod(job).containers[0].resources.limits or {})
    assert _pod(job).containers[0].resources.requests == {"cpu": "2", "memory": "8Gi"}

    run_tags = tags["run_tags"]["global_refit_job"]
    run_k8s = get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(run_tags[USER_DEFINED_K8S_CONFIG_KEY])})
    assert run_k8s.pod_spec_config["node_selector"] == {"lgsid.io/pool": "gpu"}


def test_malformed_k8s_tag_is_rejected():
    with pytest.raises(Exception, match="dagster-k8s/config"):
        get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps({"pod_spec": {"node_selector": {}}})})


def test_executor_run_config_matches_op_tags():
    run_config = load("run-config.k8s-executor.yaml")
    executor_config = run_config["execution"]["config"]
    result = validate_config(k8s_job_executor.config_schema.config_type, executor_config)
    assert result.success, [e.message for e in result.errors]
    tags = load("gpu-op-tags.yaml")["op_tags"]
    per_step = executor_config["per_step_k8s_config"]
    assert per_step == {k: v[USER_DEFINED_K8S_CONFIG_KEY] for k, v in tags.items()}


def test_gpu_assets_in_the_code_location_are_addressable():
    """per_step_k8s_config is keyed by op name: for the GPU assets that exist in the code
    location, the op behind each asset must carry that name (a multi-asset would not)."""
    import dagster as dg

    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    present = [k for k in GPU_ASSETS if dg.AssetKey(k) in graph.get_all_asset_keys()]
    for key in present:
        assets_def = defs.resolve_assets_def(dg.AssetKey(key))
        assert assets_def.node_def.name == key, (
            f"asset {key} is computed by op {assets_def.node_def.name!r}; rename the key in "
            "deploy/k8s/run-config.k8s-executor.yaml")
        op_tags = (assets_def.node_def.tags or {}).get(USER_DEFINED_K8S_CONFIG_KEY)
        if op_tags is not None:  # tags set on the asset itself must be valid too
            get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: op_tags if isinstance(op_tags, str)
                                         else json.dumps(op_tags)})


def test_delta_io_manager_accepts_an_s3_root():
    """The object-storage configuration of docs/deployment.md constructs with dagster_deltalake's
    own config classes."""
    from dagster_deltalake import S3Config
    from dagster_deltalake_polars import DeltaLakePolarsIOManager

    options = S3Config(region="eu-west-1", endpoint="https://s3.eu-west-1.amazonaws.com")
    manager = DeltaLakePolarsIOManager(root_uri="s3://lgsid-prod/lgsid/delta", schema="lgsid",
                                       storage_options=options)
    assert manager.root_uri.startswith("s3://")
    assert options.str_dict() == {"provider": "s3", "region": "eu-west-1",
                                  "endpoint": "https://s3.eu-west-1.amazonaws.com", "imdsv1_fallback": "False"}


def _helm_merge(base, overlay):
    """Helm's merge of two values files: maps merge, lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {k: _helm_merge(base[k], v) if k in base else v for k, v in overlay.items()} | {
            k: v for k, v in base.items() if k not in overlay}
    return overlay


def test_values_select_the_k8s_executor_and_pass_object_store_credentials_as_a_secret():
    values = load("values.yaml")
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["LGSID_EXECUTOR"] == "k8s"
    assert [s["name"] for s in deployment["envSecrets"]] == ["lgsid-object-store"]
    assert "LGSID_TABLES_URI" not in env  # the base values keep the tables on the volume


def test_values_s3_overlay_moves_only_the_tables_to_s3(monkeypatch, tmp_path):
    from dagster_deltalake import S3Config

    from orchestration.definitions import build_resources
    from resources import DataSource

    base = load("values.yaml")
    merged = _helm_merge(base, load("values-s3.yaml"))
    before = base["dagster-user-deployments"]["deployments"][0]
    after = merged["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in after["env"]}
    # The overlay repeats the deployment (Helm replaces lists): nothing but the two variables differs.
    assert {k: v for k, v in after.items() if k != "env"} == {k: v for k, v in before.items() if k != "env"}
    assert [e for e in after["env"] if e["name"] not in ("LGSID_TABLES_URI", "LGSID_STORAGE_OPTIONS")] == before["env"]
    assert {k: v for k, v in merged.items() if k != "dagster-user-deployments"} == {
        k: v for k, v in base.items() if k != "dagster-user-deployments"}
    # Artefacts stay on the shared volume; the tables go to the bucket, with no secret in the values.
    mounts = {m["mountPath"]: m["name"] for m in after["volumeMounts"]}
    assert mounts[env["LGSID_HOME"]] == "lgsid-home"
    options = json.loads(env["LGSID_STORAGE_OPTIONS"])
    assert not {k.lower() for k in options} & {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                                              "access_key_id", "secret_access_key"}
    # What the code location builds from that environment.
    monkeypatch.setenv("LGSID_TABLES_URI", env["LGSID_TABLES_URI"])
    monkeypatch.setenv("LGSID_STORAGE_OPTIONS", env["LGSID_STORAGE_OPTIONS"])
    resources = build_resources(str(tmp_path), DataSource(kind="generator", preset="test"))
    manager, home = resources["io_manager"], resources["home"]
    assert manager.root_uri == env["LGSID_TABLES_URI"]
    assert isinstance(manager.storage_options, S3Config) and manager.storage_options.region == options["AWS_REGION"]
    assert home.table_uri("item_catalog") == f"{env['LGSID_TABLES_URI']}/lgsid/item_catalog"
    assert home.artifact_dir("sid_codebook").is_relative_to(tmp_path)


# -- LGSID_EXECUTOR=k8s: one pod per step, only the encoder-bound steps on GPU nodes -------------
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: fake, user: {token: fake}}]
contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: lgsid}}]
current-context: fake
"""
IMAGE = "registry.example.com/lgsid:0.1.0"


@pytest.fixture(scope="module")
def k8s_defs(tmp_path_factory):
    from orchestration.definitions import build_defs
    from resources import DataSource

    home = tmp_path_factory.mktemp("k8s-defs")
    return build_defs(str(home), DataSource(kind="generator", preset="test"), executor="k8s")


def test_k8s_definitions_load_with_the_k8s_job_executor(k8s_defs, monkeypatch):
    import dagster as dg

    from orchestration import jobs
    from orchestration.definitions import build_defs

    dg.Definitions.validate_loadable(k8s_defs)
    for name in ("city_refresh_job", "global_refit_job"):
        executor_def = k8s_defs.resolve_job_def(name).executor_def
        assert executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn, name
    # Asset materializations launched from the graph (not through a job) use it too.
    assert k8s_defs.resolve_implicit_global_asset_job_def().executor_def.name == "lgsid_k8s"
    # The environment variable the Helm values set selects it; the default stays multiprocess.
    monkeypatch.setenv("LGSID_EXECUTOR", "k8s")
    assert build_defs("/tmp/lgsid-k8s-env", None).resolve_job_def("global_refit_job").executor_def.name == "lgsid_k8s"
    monkeypatch.delenv("LGSID_EXECUTOR")
    assert build_defs("/tmp/lgsid-k8s-env", None).resolve_job_def("global_refit_job").executor_def.name == "multi_or_in_process_executor"
    monkeypatch.setenv("LGSID_EXECUTOR", "k8ss")
    with pytest.raises(ValueError, match="LGSID_EXECUTOR"):
        jobs.executor_from_env()


def test_k8s_executor_defaults_match_the_deploy_files(k8s_defs):
    from dagster._core.system_config.objects import ResolvedRunConfig

    from orchestration.jobs import GPU_OPS, K8S_EXECUTOR_DEFAULTS

    assert set(GPU_OPS) == GPU_ASSETS
    run_config = load("run-config.k8s-executor.yaml")
    assert run_config["execution"]["config"] == K8S_EXECUTOR_DEFAULTS  # one mapping, two spellings
    op_tags = load("gpu-op-tags.yaml")["op_tags"]
    assert {k: v[USER_DEFINED_K8S_CONFIG_KEY] for k, v in op_tags.items()} == K8S_EXECUTOR_DEFAULTS["per_step_k8s_config"]
    # The resolved executor config: defaults, with run config merged over them.
    job = k8s_defs.resolve_job_def("global_refit_job")
    cfg = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
    assert cfg["per_step_k8s_config"]["aligned_encoder"]["pod_spec_config"]["node_selector"] == {"lgsid.io/pool": "gpu"}
    assert cfg["max_concurrent"] == 4
    cfg = ResolvedRunConfig.build(job, {"execution": {"config": {"max_concurrent": 2}}}).execution.execution_engine_config
    assert cfg["max_concurrent"] == 2 and set(cfg["per_step_k8s_config"]) == GPU_ASSETS
    # The documented run config is still accepted by the code location's executor.
    ResolvedRunConfig.build(job, run_config)


def _launch_step(k8s_defs, instance_yaml, tmp_path, monkeypatch, job_name: str, step_key: str):
    """Launch one step of ``job_name`` through dagster_k8s's own step handler (the code path of a
    real run: executor config -> container context -> construct_dagster_k8s_job) against a
    mocked Kubernetes API, and return the Job it would have created."""
    from unittest import mock

    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
    from dagster._core.system_config.objects import ResolvedRunConfig
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from dagster._grpc.types import ExecuteStepArgs
    from dagster_k8s.client import DagsterKubernetesClient

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    batch_api = mock.MagicMock()
    production_client = DagsterKubernetesClient.production_client
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(
        lambda batch_api_override=None, core_api_override=None: production_client(
            batch_api_override=batch_api, core_api_override=mock.MagicMock())))
    launcher = {**instance_yaml["run_launcher"]["config"], "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig), "job_image": IMAGE}
    job_def = k8s_defs.resolve_job_def(job_name)
    origin = ReconstructableRepository.for_module(
        "orchestration.definitions", "defs", working_directory=str(REPO)).get_reconstructable_job(job_name).get_python_origin()
    with instance_for_test(overrides={"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher",
                                                        "config": launcher}}) as instance:
        executor_config = ResolvedRunConfig.build(job_def, {}).execution.execution_engine_config
        executor = job_def.executor_def.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job_def), executor_def=job_def.executor_def, executor_config=executor_config,
            instance=instance))
        run = create_run_for_test(instance, job_name=job_name, job_code_origin=origin)
        plan = create_execution_plan(job_def)
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(job=InMemoryJob(job_def), dagster_run=run, instance=instance, execution_plan=plan),
            log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None)
        context = StepHandlerContext(instance=instance, plan_context=plan_context, steps=plan.steps,
                                     execute_step_args=ExecuteStepArgs(origin, run.run_id, [step_key]))
        list(executor._step_handler.launch_step(context))  # noqa: SLF001
    calls = [c for c in batch_api.method_calls if c[0] == "create_namespaced_job"]
    assert len(calls) == 1
    assert calls[0].kwargs["namespace"] == "lgsid"
    return calls[0].kwargs["body"]


@pytest.mark.parametrize(("job_name", "step_key", "gpu"), [
    ("global_refit_job", "aligned_encoder", True),
    ("global_refit_job", "reward_model", True),
    ("city_refresh_job", "item_embeddings", True),
    ("city_refresh_job", "catalog_assets", False),       # item_catalog, user_interactions, quarantine
    ("city_refresh_job", "cooccurrence_pairs", False),
    ("refit_global_stage_job", "sid_codebook", False),
])
def test_k8s_step_pods_put_only_the_encoder_steps_on_gpu_nodes(k8s_defs, instance_yaml, tmp_path, monkeypatch,
                                                               job_name, step_key, gpu):
    job = _launch_step(k8s_defs, instance_yaml, tmp_path, monkeypatch, job_name, step_key)
    pod = _pod(job)
    container = pod.containers[0]
    assert container.image == IMAGE
    assert job.metadata.labels["dagster/op"] == step_key
    assert job.spec.ttl_seconds_after_finished == 86400 and job.spec.backoff_limit == 0  # launcher defaults
    env = {e.name for e in container.env or []}
    assert "DAGSTER_RUN_STEP_KEY" in env
    assert [s.secret_ref.name for s in container.env_from or [] if s.secret_ref] == ["lgsid-object-store"]
    limits = container.resources.limits or {}
    if gpu:
        assert pod.node_selector == {"lgsid.io/pool": "gpu"}
        assert limits["nvidia.com/gpu"] == "1"
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
        assert container.resources.requests == {"cpu": "4", "memory": "24Gi"}
    else:
        assert pod.node_selector == {"lgsid.io/pool": "cpu"}
        assert "nvidia.com/gpu" not in limits
        assert not pod.tolerations
        assert container.resources.requests == {"cpu": "2", "memory": "8Gi"}
