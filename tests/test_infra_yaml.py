"""Every YAML file in infra/ parses, and holds the keys the code and the other files rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_infra_yaml_parses(path: Path) -> None:
    assert isinstance(load(path), dict), f"{path} is not a YAML mapping"


def test_instance_yaml_takes_connection_and_secrets_from_the_environment() -> None:
    """Dagster itself loads this file against a real Postgres in tests/test_production_config.py."""
    pg = load(INFRA / "dagster.yaml")["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(v, dict) and "env" in v for k, v in pg.items() if k not in ("port", "scheme")), \
        "connection settings and secrets come from the environment"
    assert pg["scheme"] == "postgresql+psycopg2"  # the driver dagster-postgres installs


def test_compose_services_ports_and_env() -> None:
    compose = load(INFRA / "docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "user_code", "dagster_webserver", "dagster_daemon"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    gpu = services["user_code"]
    assert gpu["build"]["dockerfile"] == "infra/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "[gpu" in (INFRA / "Dockerfile.gpu").read_text()  # the image installs the gpu extra
    env = gpu["environment"]
    # Variables prmforge reads (prmforge/env.py, the only module that reads the environment): same names here.
    settings_src = (REPO / "prmforge" / "env.py").read_text()
    for var in ("PRMFORGE_STORAGE_ROOT", "PRMFORGE_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert var in env and var in settings_src, var
    assert "PRMFORGE_REFRESH_CRON" in env and "PRMFORGE_REGISTRY" in env
    # No literal secret: passwords are interpolated from the environment.
    text = (INFRA / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "DAGSTER_PG_PASSWORD"):
        for m in re.finditer(rf"{key}: (.+)", text):
            assert m.group(1).strip().startswith("${"), f"{key} is not taken from the environment"
    # The instance config is mounted into every Dagster container image.
    assert "infra/dagster.yaml" in (INFRA / "Dockerfile").read_text()


def test_workspace_points_at_the_code_server() -> None:
    compose = load(INFRA / "docker-compose.yml")
    ws = load(INFRA / "workspace.yaml")["load_from"][0]["grpc_server"]
    cmd = load(INFRA / "docker-compose.yml")["services"]["user_code"].get("command") or []
    dockerfile_cmd = (INFRA / "Dockerfile.gpu").read_text()
    assert ws["host"] == "user_code" and "user_code" in compose["services"]
    assert f'"-p", "{ws["port"]}"' in dockerfile_cmd or str(ws["port"]) in cmd
    root_ws = load(REPO / "workspace.yaml")["load_from"][0]["python_module"]
    assert root_ws["module_name"] == "pipelines.definitions" and root_ws["attribute"] == "defs"


def test_helm_values_match_the_code() -> None:
    from pipelines import automation, definitions

    values = load(INFRA / "helm" / "values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert isinstance(values["concurrency"]["pools"]["defaultLimit"], int)
    monitoring = values["dagsterDaemon"]["runMonitoring"]  # the chart writes it to run_monitoring
    assert monitoring["enabled"] is True and monitoring["freeSlotsAfterRunEndSeconds"] > 0
    deployment = values["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    module, attr = args[args.index("-m") + 1], args[args.index("-a") + 1]
    assert module == "pipelines.definitions" and hasattr(definitions, attr)
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["PRMFORGE_EXECUTOR"] == "k8s" and "PRMFORGE_EXECUTOR" in Path(definitions.__file__).read_text()
    # The op tag the k8s executor reads is the one prmforge puts on GPU steps.
    tag = automation.k8s_gpu_op_tags()
    assert list(tag) == ["dagster-k8s/config"] and "nvidia.com/gpu" in tag["dagster-k8s/config"]
    assert "dagster-k8s/config" in (INFRA / "helm" / "values.yaml").read_text()


def test_dockerfiles_copy_files_that_exist() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        for line in (INFRA / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (REPO / src).exists(), f"{dockerfile}: COPY {src} does not exist"


def test_raycluster_matches_the_code_and_the_dagster_deployment() -> None:
    """The KubeRay cluster runs the pinned Ray, offers GPU workers, and is the one the Dagster pods dial."""
    import tomllib

    cluster = load(INFRA / "kuberay" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ray"] == [f"ray=={cluster['spec']['rayVersion']}"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0", "include-dashboard": "false"}
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {10001}
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert gpu["rayStartParams"]["num-gpus"] == worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    values = load(INFRA / "helm" / "values.yaml")
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["PRMFORGE_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    assert int(env["PRMFORGE_RAY_ACTORS"]) <= gpu["maxReplicas"]
    assert float(env["PRMFORGE_RAY_GPUS_PER_ACTOR"]) == 1.0
    image = deployment["image"]["repository"]
    assert worker["image"].split(":")[0] == image == head["template"]["spec"]["containers"][0]["image"].split(":")[0]
    assert "ray" in (INFRA / "Dockerfile.gpu").read_text().split("pip install '.[")[1].split("]")[0].split(",")
