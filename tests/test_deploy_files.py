"""The deployment files an operator runs: the Kustomize overlays render and every object is valid against the
Kubernetes schemas; the compose stack and the container images name only files, extras, settings and
entrypoints that exist. Containers cannot be built or run here (no container daemon, no base images), so these
checks are what stands between a renamed setting or file and an image or manifest that breaks on deploy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

from fleet_server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.32.0"
CRDS = {"ServiceMonitor", "PrometheusRule", "RayCluster"}  # operator kinds (Prometheus, KubeRay): not in the schemas
SETTINGS = {f"EDGELOOP_{name.upper()}" for name in Settings.model_fields}


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed: it renders the Kustomize overlays")
    r = subprocess.run(
        [
            kubectl,
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(DEPLOY / "kubernetes" / "overlays" / overlay),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _env_names(docs: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "edgeloop-config":
            names |= set(d["data"])
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            names |= {e["name"] for e in c.get("env", [])}
    return {n for n in names if n.startswith("EDGELOOP_")}


@pytest.mark.parametrize("overlay", ["dev", "production", "ray"])
def test_every_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = _render(overlay)
    for d in docs:
        if d["kind"] in CRDS:
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises with the field path on a bad object
    objs = _by_kind(docs)
    assert all(d["metadata"].get("namespace") == ("edgeloop-dev" if overlay == "dev" else "edgeloop") for d in docs
               if d["kind"] != "Namespace")  # fmt: skip
    assert _env_names(docs) <= SETTINGS, _env_names(docs) - SETTINGS
    server = objs[("Deployment", "edgeloop-server")]["spec"]
    container = server["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    if overlay == "ray":  # production, plus the Ray cluster the server's jobs go to
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["EDGELOOP_JOBS_URL"] == "ray://edgeloop-ray-head-svc:8265"
        ray = objs[("RayCluster", "edgeloop-ray")]["spec"]
        assert ray["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        (gpu,) = ray["workerGroupSpecs"]
        worker = gpu["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and worker["image"] == container["image"]
        # job data comes from the bucket the servers use: every Ray pod has its credentials and its own cache
        head = ray["headGroupSpec"]["template"]["spec"]["containers"][0]
        for pod in (head, worker):
            assert {"configMapRef": {"name": "edgeloop-config"}} in pod["envFrom"]
            penv = {e["name"]: e for e in pod["env"]}
            assert penv["EDGELOOP_CACHE_DIR"]["value"] == "/cache"
            assert penv["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "aws-secret-access-key"
            assert {"name": "cache", "mountPath": "/cache"} in pod["volumeMounts"]
        assert ("PersistentVolumeClaim", "edgeloop-jobs") not in objs
    if overlay in ("production", "ray"):
        assert (
            server["replicas"] == 3 and objs[("HorizontalPodAutoscaler", "edgeloop-server")]["spec"]["minReplicas"] == 3
        )
        secrets = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
        assert {"admin-token", "database-url", "mqtt-url", "aws-secret-access-key"} <= secrets
        assert ("StatefulSet", "edgeloop-mosquitto") in objs and ("PodDisruptionBudget", "edgeloop-server") in objs
        # the broker reads the accounts the server writes: one shared volume, and the server's group
        claim = {v["name"]: v for v in server["template"]["spec"]["volumes"]}["mqtt-auth"]
        assert claim["persistentVolumeClaim"]["claimName"] == "edgeloop-mqtt-auth"
        mosq = objs[("StatefulSet", "edgeloop-mosquitto")]["spec"]["template"]["spec"]
        assert mosq["securityContext"]["runAsGroup"] == server["template"]["spec"]["securityContext"]["runAsGroup"]
        rule = objs[("PrometheusRule", "edgeloop")]
        alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        assert rule["spec"]["groups"] == alerts["groups"], (
            "prometheusrule.yaml differs from deploy/prometheus/alerts.yml"
        )
        monitor = objs[("ServiceMonitor", "edgeloop-server")]["spec"]
        assert monitor["endpoints"][0]["path"] == "/metrics"
    else:
        assert server["replicas"] == 1 and ("StatefulSet", "edgeloop-mosquitto") not in objs
        assert ("HorizontalPodAutoscaler", "edgeloop-server") not in objs
        config = objs[("ConfigMap", "edgeloop-config")]["data"]
        assert config["EDGELOOP_MQTT_BROKER"] == "embedded" and "EDGELOOP_DATABASE_URL" not in _env_names(docs)


def _dockerfiles() -> list[Path]:
    return [DEPLOY / "server" / "Dockerfile", *sorted((ROOT / "firmware_images").glob("*/Dockerfile"))]


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_image_names_files_extras_and_entrypoints_that_exist(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, scripts = set(project["optional-dependencies"]), set(project["scripts"])
    lines = re.sub(r"\\\n", " ", text).splitlines()
    for ln in lines:
        if ln.startswith("COPY") and "--from=" not in ln:
            *sources, _dest = ln.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    named = {x.strip() for group in re.findall(r"[.\]]?\[([a-z0-9,\- ]+)\]['\"]", text) for x in group.split(",")}
    assert named and named <= extras, f"{dockerfile}: extras {named - extras} not in pyproject.toml"
    entry = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    assert len(entry) == 1 and yaml.safe_load(entry[0].split(None, 1)[1])[0] in scripts
    users = [ln.split()[1] for ln in lines if ln.startswith("USER")]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile} must run as a non-root user"


def test_the_compose_stack_names_files_and_settings_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"server-1", "server-2", "proxy", "postgres", "mosquitto", "minio", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("./") and not src.startswith("./certs"):  # certs: made by make-certs.sh
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
        if name.startswith("server-"):  # the servers' settings are all real ones
            env = svc["environment"]
            assert {k for k in env if k.startswith("EDGELOOP_")} <= SETTINGS, name
    for replica in ("server-1", "server-2"):  # each its own persistent MQTT session
        assert services[replica]["environment"]["EDGELOOP_MQTT_CLIENT_ID"] == f"edgeloop-{replica}"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["server-1:8080", "server-2:8080"] and prom["scrape_configs"][0]["job_name"] == "edgeloop-server"
    example = dict(
        ln.split("=", 1) for ln in (DEPLOY / ".env.example").read_text().splitlines() if "=" in ln and ln[0] != "#"
    )
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", (DEPLOY / "compose.yaml").read_text()))
    assert needed <= set(example), needed - set(example)
