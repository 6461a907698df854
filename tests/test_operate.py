"""Running edgeloop in production: a real Prometheus scrapes the server and loads its alert rules, promtool
unit-tests every alert, and /readyz says when a dependency is gone. If these fail, an operator's monitoring
shows nothing, alerts never fire (or fire all the time), or a load balancer sends traffic to a replica that
cannot serve it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, Server, deploy_all, free_port, start_mosquitto, wait_for
from tools.fleet_sim import FleetSim

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs Debian's prometheus package")
    return exe


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    check = subprocess.run(
        [_tool("promtool"), "check", "rules", "alerts.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        [_tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    # every alert in the file is exercised by a test case
    rules = {ln.split(":", 1)[1].strip() for ln in (PROM / "alerts.yml").read_text().splitlines() if "- alert:" in ln}
    tested = {
        ln.split(":", 1)[1].strip() for ln in (PROM / "alerts_test.yml").read_text().splitlines() if "alertname:" in ln
    }
    assert rules == tested, rules ^ tested


class Prometheus:
    """A real Prometheus process scraping `targets` every second, with the project's alert rules loaded."""

    def __init__(self, work: Path, targets: list[str]) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROM / "alerts.yml", work / "alerts.yml")
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            "  - job_name: edgeloop-server\n"
            f"    static_configs: [{{targets: {targets!r}}}]\n"
        )
        self.proc = Proc(
            [
                _tool("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            work / "prometheus.log",
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 30, f"prometheus on {self.url}\n{self.proc.log()[-2000:]}")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        assert r.status_code == 200, r.text
        return list(r.json()["data"]["result"])

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


@pytest.fixture()
def served(tmp_path: Path, mosquitto: str, assets: dict[str, Path]) -> Iterator[tuple[Server, FleetSim]]:
    s = Server(tmp_path / "server", mosquitto, env={"EDGELOOP_ROLLOUT_TICK_S": "0.2"})
    sim = FleetSim(s.url, s.token, mosquitto, 6, "prom", telemetry_interval_s=0.2)
    try:
        s.push(assets["model_v1"])
        sim.enroll({"site": "prom"})
        sim.start()
        deploy_all(s, sim, 1)
        yield s, sim
    finally:
        sim.stop()
        s.stop()


@pytest.mark.e2e
def test_a_real_prometheus_scrapes_the_fleet_and_loads_the_alert_rules(
    tmp_path: Path, served: tuple[Server, FleetSim]
) -> None:
    server, sim = served
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{server.port}"])
    try:
        wait_for(lambda: prom.value('up{job="edgeloop-server"}') == 1, 30, "the server scraped")
        online = 'sum(edgeloop_devices{online="1"})'
        wait_for(lambda: prom.value(online) == 6, 20, "6 devices online in Prometheus")
        assert prom.value('sum(edgeloop_devices_serving{model="colors",version="1"})') == 6
        assert (prom.value("edgeloop_bridge_applied_total") or 0) > 0
        assert prom.value("edgeloop_bridge_up") == 1
        routes = {r["metric"]["route"] for r in prom.query("edgeloop_http_request_seconds_count")}
        assert "/api/v1/devices/{device_id}/deployment" in routes

        # the fleet changes; Prometheus sees it on the next scrapes
        gone = sorted(sim.devices)[0]
        sim.set_online(gone, False)
        wait_for(lambda: prom.value('sum(edgeloop_devices{online="0"})') == 1, 20, "1 device offline in Prometheus")
        r = server.http.post(
            "/api/v1/rollouts",
            json={"model": "colors", "version": 1, "selector": "site=prom", "bake_s": 3600, "gates": []},
        )
        assert r.status_code == 201, r.text
        wait_for(
            lambda: prom.value(f'edgeloop_rollout_wave_budget_seconds{{rollout="{r.json()["id"]}"}}') == 3600 + 600,
            20,
            "the running rollout's wave budget",
        )

        # the alert rules are loaded and evaluated against the live series (a healthy fleet: none firing)
        groups = httpx.get(prom.url + "/api/v1/rules").json()["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == 13 and all(rule["health"] == "ok" for rule in rules), rules
        firing = [a for a in httpx.get(prom.url + "/api/v1/alerts").json()["data"]["alerts"] if a["state"] == "firing"]
        assert firing == []
    finally:
        prom.proc.stop()


@pytest.mark.e2e
def test_readyz_names_the_dependency_that_is_gone(tmp_path: Path) -> None:
    broker, port = start_mosquitto(tmp_path)
    s = Server(tmp_path / "server", f"mqtt://127.0.0.1:{port}")
    try:
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 200 and r.json() == {
            "ok": True,
            "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
        }
        broker.stop()
        r = wait_for(lambda: (x := httpx.get(s.url + "/readyz")).status_code == 503 and x, 15, "not ready")
        assert r.json()["checks"]["broker"] == "not connected" and r.json()["checks"]["database"] == "ok"
        assert s.proc.alive()  # liveness is another question: the process keeps running and reconnecting
    finally:
        s.stop()


@pytest.mark.e2e
def test_every_dashboard_query_parses_and_names_only_exported_metrics(tmp_path: Path) -> None:
    """Grafana cannot run here: promtool parses each panel's query, and each metric it names must be one the
    server exports (read from a live server's /metrics) or the agent exports (its /metrics code)."""
    import json
    import re

    import yaml

    dash = json.loads((ROOT / "deploy" / "grafana" / "edgeloop.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 20 and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [_tool("promtool"), "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    s = Server(tmp_path / "server", None, extra=["--mqtt-broker", "embedded"])
    try:
        text = httpx.get(s.url + "/metrics").text
    finally:
        s.stop()
    families = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    agent = (ROOT / "edge_agent" / "endpoints.py").read_text()
    families |= set(re.findall(r"# TYPE (edgeloop_[a-z0-9_]+)", agent)) | set(
        re.findall(r'\("(edgeloop_[a-z0-9_]+)"', agent)
    )
    families |= {"up"}
    exported = families | {f + suffix for f in families for suffix in ("_total", "_bucket", "_sum", "_count")}
    named = {m for e in exprs for m in re.findall(r"\b(edgeloop_[a-z0-9_]+|up)\b", e)}
    assert named <= exported, sorted(named - exported)
    assert {"edgeloop_inference_fps", "edgeloop_devices_serving", "edgeloop_rollout_devices"} <= named
