"""The deployment files (deploy/): no container engine runs here, so each file is parsed and
checked for what can be checked without running it: services, ports, images, volumes, that every
LIVETWIN_* variable they set is one livetwin reads, and every `livetwin` option they use exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
import yaml

from livetwin.cli import app
from livetwin.cluster.shard import SHARD_RESOURCE
from livetwin.settings import MqttConnection, Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def read_by_livetwin(var: str) -> bool:
    """Whether livetwin's settings pick up the variable `var` from the environment."""
    value = "postgresql://u@h/db" if var.endswith("URL") else "x"
    if Settings.from_env(environ={var: value}) != Settings.from_env(environ={}):
        return True
    broker = MqttConnection("broker")
    return broker.with_env({var: value}) != broker


def check_livetwin_args(args: list[str]) -> None:
    """`args` is a livetwin command line whose options all exist."""
    command = typer.main.get_command(app)
    sub = command.commands[args[0]]
    known = {opt for param in sub.params for opt in [*param.opts, *param.secondary_opts]}
    used = {a for a in args[1:] if a.startswith("--")}
    assert used - known == set(), f"unknown options of {args[0]}"


def check_env(env: dict[str, str] | list[dict]) -> None:
    names = [e["name"] for e in env] if isinstance(env, list) else list(env)
    for name in names:
        if name.startswith("LIVETWIN_") and name != "LIVETWIN_TOKEN":  # TOKEN: the CLI's
            assert read_by_livetwin(name), f"{name} is not a variable livetwin reads"


def test_the_dockerfile_is_slim_non_root_and_serves_on_8000():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert re.match(r"FROM python:3\.1[1-9]-slim$", lines[0])
    user = [line for line in lines if line.startswith("USER ")]
    assert user == ["USER livetwin"] and "useradd --system --uid 10001" in text
    assert text.index("USER livetwin") > text.index('RUN pip install ".[${EXTRAS}]"')
    assert "ARG EXTRAS=postgres,s3,files" in text  # the server's extras exist in pyproject.toml
    extras = (DEPLOY.parent / "pyproject.toml").read_text()
    for extra in ("postgres", "s3", "files"):
        assert f"\n{extra} = [" in extras
    assert "EXPOSE 8000" in text and "/api/health" in text
    cmd = yaml.safe_load(next(line for line in lines if line.startswith("CMD "))[4:])
    check_livetwin_args(cmd)


def test_compose_starts_livetwin_with_postgres_mosquitto_and_a_provisioned_grafana():
    (compose,) = load("compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "mosquitto", "livetwin", "dashboard", "grafana"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    livetwin = services["livetwin"]
    assert livetwin["image"] == services["dashboard"]["image"] == "livetwin:latest"
    assert livetwin["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / livetwin["build"]["context"] / livetwin["build"]["dockerfile"]).exists()
    assert "8000:8000" in livetwin["ports"] and "1883:1883" in services["mosquitto"]["ports"]
    check_livetwin_args(livetwin["command"])
    assert livetwin["command"][livetwin["command"].index("--mqtt") + 1] == "mosquitto:1883"
    check_livetwin_args(services["dashboard"]["command"])
    env = livetwin["environment"]
    check_env(env)
    assert (
        env["LIVETWIN_DATABASE_URL"].startswith("postgresql://")
        and "@postgres:5432/" in env["LIVETWIN_DATABASE_URL"]
    )
    assert livetwin["depends_on"]["postgres"]["condition"] == "service_healthy"
    named = set(compose["volumes"])
    for service in services.values():  # every named volume is declared; bind mounts exist
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
            else:
                assert source in named, source
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert "listener 1883" in conf and "persistence true" in conf


def test_grafana_is_provisioned_with_the_data_source_the_dashboard_names():
    (compose,) = load("compose.yaml")
    (sources,) = load("grafana/provisioning/datasources/livetwin.yaml")
    (source,) = sources["datasources"]
    assert source["url"] == "postgres:5432" and source["jsonData"]["database"] == "livetwin"
    assert source["secureJsonData"]["password"] == "$POSTGRES_PASSWORD"
    assert "POSTGRES_PASSWORD" in compose["services"]["grafana"]["environment"]
    command = compose["services"]["dashboard"]["command"]
    assert command[command.index("--datasource-uid") + 1] == source["uid"]
    (providers,) = load("grafana/provisioning/dashboards/livetwin.yaml")
    path = providers["providers"][0]["options"]["path"]
    written = command[command.index("--output") + 1]  # the dashboard volume, seen by Grafana
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    dashboard_mounts = dict(v.split(":")[:2] for v in compose["services"]["dashboard"]["volumes"])
    assert mounts["dashboards"] == path and written.startswith(dashboard_mounts["dashboards"])


def test_the_kuberay_example_runs_shards_on_workers_and_stateless_front_ends():
    (cluster,) = load("kuberay/raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no shard actors on the head
    (head_container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["client"] == 10001 and ports["gcs-server"] == 6379
    containers = [head_container]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        offered = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert offered[SHARD_RESOURCE] > 0  # the shards' nodes
        containers += group["template"]["spec"]["containers"]
    redis = {d["kind"]: d for d in load("kuberay/redis.yaml")}
    redis_address = spec["gcsFaultToleranceOptions"]["redisAddress"]
    service = redis["Service"]
    assert redis_address == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert (
        redis["Deployment"]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"][
            "claimName"
        ]
        == redis["PersistentVolumeClaim"]["metadata"]["name"]
    )
    front = {d["kind"]: d for d in load("kuberay/frontend.yaml")}
    deployment, svc = front["Deployment"], front["Service"]
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (front_container,) = pod["spec"]["containers"]
    containers.append(front_container)
    args = front_container["args"]
    check_livetwin_args(args)
    head_service = f"{cluster['metadata']['name']}-head-svc"  # the Service KubeRay makes
    assert args[args.index("--cluster") + 1] == f"ray://{head_service}:{ports['client']}"
    assert svc["spec"]["ports"][0]["targetPort"] == front_container["ports"][0]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    for container in containers:
        assert container["image"] == "livetwin:ray"  # the Dockerfile built with the ray extra
        check_env(container["env"])
        assert "LIVETWIN_DATABASE_URL" in {e["name"] for e in container["env"]}
