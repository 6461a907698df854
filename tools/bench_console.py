"""Console speed at fleet scale: page latency with 100 and 5,000 devices, side by side in one run.

The devices and their telemetry history are written straight into a fresh database (the ingest path has its
own benchmark, bench_fleet.py); a real `edgeloop server` then serves the pages over HTTP to a logged-in
operator. For each page: p50 / p95 over the repetitions, and the ratio 5,000 ÷ 100 devices (flat is the
aim: pages are paginated and filtered in SQL). Also the JSON API's list of the same 50 devices, for scale.
Prints a table, writes JSON (default bench-results/bench_console.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import Server, start_mosquitto  # noqa: E402

PAGES = [
    ("fleet page", "/console/fleet"),
    ("fleet live rows", "/console/fleet/rows"),
    ("fleet: offline filter", "/console/fleet/rows?state=offline"),
    ("fleet: tag filter", "/console/fleet/rows?tag=site%3Dsite-7"),
    ("fleet: id search, page 2", "/console/fleet/rows?q=dev-0&page=2"),
    ("device page", "/console/devices/dev-00042"),
    ("device charts (1 h)", "/console/devices/dev-00042/series"),
    ("API: 50 devices", "/api/v1/devices?limit=50"),
]


def populate(data_dir: Path, n: int, points_per_device: int, seed: int = 0) -> None:
    from sqlmodel import Session

    from fleet_server.db import make_engine, migrate
    from fleet_server.devices.tables import Device, TelemetryPoint

    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(data_dir / 'edgeloop.db').resolve()}")
    migrate(engine)
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    states = ["committed"] * 8 + ["downloading", "failed"]
    with Session(engine) as s:
        for i in range(n):
            online = rng.random() < 0.9
            s.add(
                Device(
                    id=f"dev-{i:05d}",
                    token_hash=f"{i:064x}",
                    tags_json=json.dumps({"site": f"site-{i % 40}", "group": f"g{i % 7}"}, sort_keys=True),
                    online=online,
                    last_seen=now - timedelta(seconds=rng.uniform(0, 600)),
                    model="eldet",
                    version=rng.choice([3, 4]),
                    state=rng.choice(states),
                    fps=rng.uniform(20, 30) if online else None,
                    latency_ms_p95=rng.uniform(4, 9),
                    staleness_ms_p99=rng.uniform(30, 90),
                )
            )
            for k in range(points_per_device):
                s.add(
                    TelemetryPoint(
                        device_id=f"dev-{i:05d}",
                        at=now - timedelta(seconds=30 * k),
                        model="eldet",
                        version=4,
                        fps=rng.uniform(20, 30),
                        latency_ms_p95=rng.uniform(4, 9),
                        staleness_ms_p99=rng.uniform(30, 90),
                        frames=1000 * k,
                        confidences=json.dumps([round(rng.random(), 3) for _ in range(5)]),
                    )
                )
            if i % 500 == 499:
                s.commit()
        s.commit()
    engine.dispose()


def measure(server: Server, reps: int) -> dict[str, dict[str, float]]:
    server.http.post("/api/v1/users", json={"name": "bench", "role": "operator", "password": "Bench-pass-123"})
    c = httpx.Client(base_url=server.url, timeout=30)
    r = c.post("/console/login", data={"name": "bench", "password": "Bench-pass-123"})
    assert r.status_code == 303, r.text
    out = {}
    for name, path in PAGES:
        client = server.http if path.startswith("/api/") else c
        client.get(path).raise_for_status()  # warm
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            resp = client.get(path)
            times.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
        times.sort()
        out[name] = {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}
    c.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=5000)
    ap.add_argument("--points", type=int, default=20, help="telemetry points per device (device charts)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", type=Path, default=ROOT / "bench-results" / "bench_console.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "mq").mkdir()
        mq, port = start_mosquitto(work / "mq")
        results = {}
        try:
            for n in (args.small, args.large):
                t0 = time.perf_counter()
                populate(work / f"s{n}" / "data", n, args.points)
                print(f"wrote {n} devices and {n * args.points} telemetry points in {time.perf_counter() - t0:.1f} s")
                server = Server(work / f"s{n}" / "data", f"mqtt://127.0.0.1:{port}")
                try:
                    results[n] = measure(server, args.reps)
                finally:
                    server.stop()
        finally:
            mq.stop()
    small, large = results[args.small], results[args.large]
    rows = []
    print(f"\n{'page':<28} {args.small:>6} dev p50  p95   {args.large:>6} dev p50  p95   ratio (p50)")
    for name, _ in PAGES:
        a, b = small[name], large[name]
        ratio = b["p50_ms"] / a["p50_ms"]
        rows.append({"page": name, "small": a, "large": b, "ratio_p50": round(ratio, 2)})
        cells = f"{a['p50_ms']:>10.1f} {a['p95_ms']:>6.1f}   {b['p50_ms']:>10.1f} {b['p95_ms']:>6.1f}"
        print(f"{name:<28} {cells}   {ratio:>6.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"host": platform.node(), "devices": [args.small, args.large], "points": args.points, "rows": rows},
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
