"""Fleet-scale figures with the fleet simulator, a real Mosquitto and real `edgeloop server` processes.

1. rollout of one version to N simulated devices (default 1000 and 5000): time from create to 100%
   active (no bake), and the server's CPU seconds and peak memory meanwhile;
2. telemetry ingest: messages/s the server stores vs the raw broker rate a plain paho subscriber sees in
   the same run (target >= 0.5x);
3. with --replicas [1,2,4]: that many server replicas on one PostgreSQL, sharing the load through $share.
Prints a table, writes JSON (default bench-results/bench_fleet.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.builders.color_classifier import build_color_classifier  # noqa: E402
from tests.helpers import Server, start_mosquitto  # noqa: E402
from tools.fleet_sim import FleetSim  # noqa: E402

TICK = {"EDGELOOP_ROLLOUT_TICK_S": "0.2"}


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MiB) of a process, from /proc."""
    import os

    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = (
        next(
            int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS")
        )
        / 1024
    )
    return cpu, rss


class RawCounter:
    """A plain paho subscriber: the broker rate the server is compared with."""

    def __init__(self, port: int) -> None:
        self.n = 0
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("edgeloop/v1/devices/+/telemetry", 0)
        self.c.loop_start()

    def _on(self, c, u, m) -> None:  # type: ignore[no-untyped-def]
        self.n += 1

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def rollout_run(work: Path, mqtt_url: str, model: Path, n: int, connections: str = "shared") -> dict:
    """With connections="own" each device connects as itself to the Mosquitto the server manages (its ACLs
    and accounts), instead of all of them over one connection to a plain broker."""
    own = connections == "own"
    extra = ["--mqtt-broker", "mosquitto"] if own else None
    server = Server(work / f"server-{n}-{connections}", None if own else mqtt_url, extra=extra, env=TICK)
    sim = None
    try:
        server.push(model)
        sim = FleetSim(
            server.url, server.token, mqtt_url, n, f"f{n}", telemetry_interval_s=5.0, connections=connections
        )
        t0 = time.monotonic()
        sim.enroll()
        enroll_s = time.monotonic() - t0
        sim.start()
        t0 = time.monotonic()
        while own and sim.connected() < n:
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"only {sim.connected()} of {n} devices connected in 5 minutes")
            time.sleep(0.2)
        connect_s = time.monotonic() - t0
        cpu0, _ = proc_usage(server.proc.p.pid)
        peak = 0.0
        t0 = time.monotonic()
        r = server.http.post(
            "/api/v1/rollouts",
            json={
                "model": "colors",
                "version": 1,
                "selector": "all",
                "canary": "1%",
                "waves": ["100%"],
                "bake_s": 0,
                "gates": [],
                "offline_timeout_s": 600,
            },
        )
        r.raise_for_status()
        rid = r.json()["id"]
        while True:
            st = server.http.get(f"/api/v1/rollouts/{rid}").json()["state"]
            peak = max(peak, proc_usage(server.proc.p.pid)[1])
            if st != "running":
                break
            if time.monotonic() - t0 > 900:
                raise RuntimeError("rollout did not finish in 15 minutes")
            time.sleep(0.5)
        took = time.monotonic() - t0
        cpu1, _ = proc_usage(server.proc.p.pid)
        on_v1 = sum(1 for v in sim.versions().values() if v == 1)
        return {
            "devices": n,
            "connections": connections,
            "connect_s": round(connect_s, 2) if own else None,
            "state": st,
            "create_to_all_active_s": round(took, 2),
            "devices_on_version": on_v1,
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "server_peak_rss_mib": round(peak, 1),
            "enroll_s": round(enroll_s, 2),
        }
    finally:
        if sim:
            sim.stop()
        server.stop()


def ingest_run(servers: list[Server], mqtt_port: int, n: int, seconds: float, db: str) -> dict:
    first = servers[0]
    sim = FleetSim(
        first.url,
        first.token,
        f"mqtt://127.0.0.1:{mqtt_port}",
        n,
        f"ing{uuid.uuid4().hex[:4]}",
        telemetry_interval_s=0.25,
    )
    sim.enroll()
    for d in sim.devices.values():  # a model to report on, without a deploy: the simulator starts on it
        d.model, d.version, d.state = "colors", 1, "committed"
    raw = RawCounter(mqtt_port)
    sim.start()
    time.sleep(2)

    def applied() -> int:
        return sum(httpx.get(s.url + "/healthz").json()["bridge"].get("applied", 0) for s in servers)

    def shed() -> int:
        return sum(httpx.get(s.url + "/healthz").json()["bridge"].get("telemetry_shed", 0) for s in servers)

    a0, r0, t0, s0 = applied(), raw.n, time.monotonic(), shed()
    time.sleep(seconds)
    a1, r1, t1 = applied(), raw.n, time.monotonic()
    sim.stop()
    raw.close()
    overflow = shed() - s0
    server_rate, raw_rate = (a1 - a0) / (t1 - t0), (r1 - r0) / (t1 - t0)
    return {
        "database": db,
        "replicas": len(servers),
        "devices": n,
        "server_msgs_per_s": round(server_rate, 1),
        "raw_broker_msgs_per_s": round(raw_rate, 1),
        "server_over_raw": round(server_rate / raw_rate, 3),
        "telemetry_shed": overflow,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000", help="fleet sizes for the rollout run")
    ap.add_argument(
        "--connections",
        default="shared",
        help="shared (one MQTT connection for the simulated fleet), own (one per device, with its credentials, "
        "through the Mosquitto the server manages), or shared,own for both",
    )
    ap.add_argument("--no-ingest", action="store_true", help="rollouts only")
    ap.add_argument("--ingest-devices", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--replicas",
        nargs="?",
        const="1,2",
        default="",
        help="also measure ingest with these numbers of server replicas on one PostgreSQL (default 1,2; e.g. 1,2,4)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_fleet.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-fleet-"))
    broker, port = start_mosquitto(work, extra_conf="max_queued_messages 100000\n")
    mqtt_url = f"mqtt://127.0.0.1:{port}"
    model = build_color_classifier(work / "colors.onnx")
    out: dict = {"rollouts": [], "ingest": []}
    try:
        for conn in [c for c in args.connections.split(",") if c]:
            for n in (int(x) for x in args.sizes.split(",") if x):
                out["rollouts"].append(rollout_run(work, mqtt_url, model, n, conn))
                print(f"rollout to {n} ({conn} connections): {out['rollouts'][-1]}", flush=True)
        if not args.no_ingest:
            s1 = Server(work / "ingest", mqtt_url)
            try:
                out["ingest"].append(ingest_run([s1], port, args.ingest_devices, args.seconds, "sqlite"))
            finally:
                s1.stop()
        if args.replicas and not args.no_ingest:
            from tests.pg import PostgresServer

            pg = PostgresServer()
            servers: list[Server] = []
            try:
                db = pg.create_database("edgeloop_bench")
                # each count is measured with exactly that many replicas running: a replica that runs but is not
                # counted would take its share of the traffic ($share) and halve the figure
                for count in sorted({int(x) for x in args.replicas.split(",")}):
                    while len(servers) < count:
                        servers.append(Server(work / f"rep{len(servers)}", mqtt_url, extra=["--database-url", db]))
                    out["ingest"].append(ingest_run(servers, port, args.ingest_devices, args.seconds, "postgresql"))
                    print(f"ingest, {count} replica(s): {out['ingest'][-1]}", flush=True)
            finally:
                for s in servers:
                    s.stop()
                pg.stop()
    finally:
        broker.stop()
    print(
        f"\n{'rollout (no bake)':<22}{'conns':>7}{'devices':>8}{'connect s':>10}{'create->100% s':>16}{'CPU s':>8}"
        f"{'peak MiB':>10}{'enroll s':>10}"
    )
    for r in out["rollouts"]:
        print(
            f"{r['state']:<22}{r['connections']:>7}{r['devices']:>8}{r['connect_s'] or '-':>10}"
            f"{r['create_to_all_active_s']:>16}{r['server_cpu_s']:>8}{r['server_peak_rss_mib']:>10}{r['enroll_s']:>10}"
        )
    print(f"\n{'telemetry ingest':<26}{'devices':>8}{'server msg/s':>14}{'raw msg/s':>11}{'ratio':>8}{'shed':>9}")
    for r in out["ingest"]:
        where = f"{r['database']}, {r['replicas']} replica(s)"
        print(
            f"{where:<26}{r['devices']:>8}{r['server_msgs_per_s']:>14}"
            f"{r['raw_broker_msgs_per_s']:>11}{r['server_over_raw']:>8}{r['telemetry_shed']:>9}"
        )
    out["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
