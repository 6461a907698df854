"""Model zoo benchmarks on this machine's CPU, all from one run.

1. The compact detector (eldet): train on the `easy` synthetic preset for at most --minutes on the CPU,
   then mAP50 / mAP50-95 on the held-out split, scored on the ONNX artifact through the agent's decoder.
2. Every compile target per model (eldet, mobilenet_v3_small, resnet18): latency p50/p99 at batch 1,
   speedup vs FP32, accuracy delta, size, and the recommendation per device class.
3. torch eager vs onnxruntime FP32 latency on the same model and input, side by side.
4. The fleet measures what it runs: the detector's version (fp32 + int8) deployed through a real server and
   Mosquitto to three simulated devices of three hardware keys, which time the real artifacts on this CPU,
   one key with a declared int8 slowdown and one with a declared fp32 slowdown. Prints the table the server
   shows (`edgeloop models show`); the chosen target must differ by hardware where the timings say so.
Prints a table, writes JSON (default bench-results/bench_compile.json).

    python tools/bench_compile.py                                        # the full run (about 10 min)
    python tools/bench_compile.py --minutes 0.5 --scenes 200 --classifiers ""   # a quick one
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.compile import CompileReport, compile_checkpoint, measure_latency, table_text  # noqa: E402
from model_zoo.datasets.store import DatasetStore, synthesize  # noqa: E402
from model_zoo.train import train  # noqa: E402


def torch_latency(ckpt: Path, seconds: float = 2.0) -> dict:
    """Eager torch at batch 1, with the faster of 1 thread and all cores (as measure_latency does for ORT)."""
    import os

    import torch

    from model_zoo.models import build

    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build(ck["model"], len(ck["classes"]), ck["size"]).eval()
    model.load_state_dict(ck["state_dict"])
    x = torch.rand(1, 3, ck["size"], ck["size"])
    best = None
    before = torch.get_num_threads()
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        times = []
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 20:
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000)
        res = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "threads": threads}
        if best is None or res["p50"] < best["p50"]:
            best = res
    torch.set_num_threads(before)
    assert best is not None
    return best


# hardware key -> target -> declared slowdown (1.0: as timed on this CPU)
SIM_HARDWARE = {
    "sim-x86 (as timed here)": {},
    "sim-arm (int8 declared 3x slower)": {"onnx-int8": 3.0},
    "sim-x86-old (fp32 declared 2x slower)": {"onnx-fp32": 2.0},
}


def fleet_measurement(work: Path, report: CompileReport, budget_s: float) -> dict:
    """Register the compiled fp32 + int8 targets as one version, deploy it to one simulated device per
    hardware key, and read back what the server keeps and shows."""
    from sqlmodel import Session

    from edge_agent.protocol.manifest import ArtifactEntry, DecoderSpec, InputSpec
    from fleet_server.cli.main import fleet_table_text
    from fleet_server.db import make_engine
    from fleet_server.keys import ensure_keys
    from fleet_server.registry.service import register_artifacts
    from fleet_server.storage import LocalStore
    from tests.helpers import Server, start_mosquitto, wait_for
    from tools.fleet_sim import FleetSim

    broker, port = start_mosquitto(work / "fleet-broker")
    server = Server(work / "fleet-server", f"mqtt://127.0.0.1:{port}")
    sim = None
    try:
        store = LocalStore(server.data_dir / "artifacts")
        arts = {}
        for t in ("onnx-fp32", "onnx-int8"):
            r = report.result(t)
            assert r is not None and r.built and r.path and r.sha256 and r.size, f"{t} was not built"
            store.add_copy(Path(r.path), r.sha256)
            arts[t] = ArtifactEntry(url=f"/api/v1/artifacts/{r.sha256}", sha256=r.sha256, length=r.size,
                                    latency_ms=r.latency_p50_ms, measured_on="cpu", accuracy=r.accuracy,
                                    accuracy_delta=r.delta)  # fmt: skip
        with Session(make_engine(f"sqlite:///{server.data_dir / 'edgeloop.db'}")) as s:
            mv = register_artifacts(
                s, ensure_keys(server.data_dir), "eldet-fleet", report.task, report.classes,
                InputSpec.model_validate(report.input_spec), DecoderSpec(type="yolov8"), arts, 30,
            )  # fmt: skip
            s.commit()
            version = mv.version
        hardware = {f"hw-{i:05d}": key for i, key in enumerate(SIM_HARDWARE)}
        sim = FleetSim(server.url, server.token, f"mqtt://127.0.0.1:{port}", len(hardware), prefix="hw",
                       hardware=hardware, slowdown=SIM_HARDWARE, measure_budget_s=budget_s)  # fmt: skip
        sim.enroll()
        sim.start()
        t0 = time.monotonic()
        for dev in hardware:
            server.http.put(f"/api/v1/devices/{dev}/deployment", json={"model": "eldet-fleet", "version": version})
        wait_for(lambda: all(server.device(d)["target"] for d in hardware), 120, "every simulated device serving")
        took = time.monotonic() - t0
        shown = server.http.get(f"/api/v1/models/eldet-fleet/versions/{version}").json()["fleet_measurements"]
        chosen = {
            hardware[d]: {"target": (x := server.device(d))["target"], "reason": x["target_reason"]} for d in hardware
        }
        targets = {v["target"] for v in chosen.values()}
        assert len(targets) > 1, f"every hardware key chose the same target: {chosen}"
        return {"rows": shown, "chosen": chosen, "table": fleet_table_text(shown), "deploy_to_served_s": round(took, 1)}
    finally:
        if sim is not None:
            sim.stop()
        server.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=4.5, help="detector training budget (CPU)")
    ap.add_argument("--scenes", type=int, default=1500, help="synthetic scenes for the detector")
    ap.add_argument("--classifiers", default="mobilenet_v3_small,resnet18", help="comma-separated, or empty")
    ap.add_argument("--cls-epochs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-results" / "compile-work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_compile.json")
    ap.add_argument("--fleet-budget", type=float, default=2.0, help="seconds each simulated device times a target")
    ap.add_argument(
        "--fleet-only", action="store_true", help="only part 4, with the detector compiled by an earlier run in --work"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fleet_only:
        report = CompileReport.from_json(json.loads((args.work / "eldet-compiled" / "report.json").read_text()))
        fleet = fleet_measurement(args.work, report, args.fleet_budget)
        print(fleet["table"])
        for hw, got in fleet["chosen"].items():
            print(f"  {hw}: serves {got['target']}: {got['reason']}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"fleet": fleet}, indent=1, default=str))
        return 0
    store = DatasetStore(args.work / "data")
    results: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version()}, "models": {}}

    runs = []
    print(f"== eldet: {args.scenes} easy scenes, training for at most {args.minutes} min on the CPU", flush=True)
    dv = store.load("shapes") if store.versions("shapes") else synthesize(store, "shapes", "easy", args.scenes, 1)
    t0 = time.monotonic()
    summary = train(dv, "eldet", args.work / "eldet", epochs=12, batch=16, lr=3e-3, max_minutes=args.minutes)
    runs.append(("eldet", dv, args.work / "eldet" / "best.pt", time.monotonic() - t0, summary))
    for name in [c for c in args.classifiers.split(",") if c]:
        print(f"== {name}: {args.cls_epochs} epochs on one-shape images (224 px)", flush=True)
        cdv = (
            store.load("cls")
            if store.versions("cls")
            else synthesize(store, "cls", "easy", 600, 2, (224, 224), task="classify")
        )
        t0 = time.monotonic()
        s = train(cdv, name, args.work / name, epochs=args.cls_epochs, batch=16, lr=2e-3)
        runs.append((name, cdv, args.work / name / "best.pt", time.monotonic() - t0, s))

    rows = []
    for name, d, ckpt, train_s, summary in runs:
        print(f"== compiling {name}", flush=True)
        report = compile_checkpoint(ckpt, d, args.work / f"{name}-compiled", latency_seconds=3.0)
        print(table_text(report), flush=True)
        tl = torch_latency(ckpt)
        fp32 = report.result("onnx-fp32")
        assert fp32 is not None and fp32.path is not None
        ort = measure_latency(Path(fp32.path), (1, 3, report.input_size, report.input_size), seconds=2.0)
        results["models"][name] = {
            "train_seconds": round(train_s, 1),
            "training": summary,
            "dataset": d.ref,
            "val_samples": len(d.split("val")),
            "report": report.to_json(),
            "torch_eager": tl,
            "onnxruntime_fp32": ort,
            "ort_over_torch_speedup": round(tl["p50"] / ort["p50"], 2),
        }
        for r in report.results:
            rows.append((name, r, report.metric))
        rows.append((name, ("torch", tl, ort), report.metric))

    print()
    print(
        f"{'model':<20} {'target':<15} {'status':<26} {'p50 ms':>7} {'p99 ms':>7} {'speedup':>7} "
        f"{'metric':>16} {'delta':>6} {'size MB':>7}"
    )
    for name, r, metric in rows:
        if isinstance(r, tuple):
            _, tl, ort = r
            ratio = ort["p50"] / tl["p50"]  # the speedup column: fp32 latency / this latency
            print(f"{name:<20} {'torch eager':<15} {'':<26} {tl['p50']:>7.2f} {tl['p99']:>7.2f} {ratio:>6.2f}x")
            continue
        acc = r.accuracy.get(metric)
        print(
            f"{name:<20} {r.target:<15} {r.status[:26]:<26} "
            f"{(f'{r.latency_p50_ms:.2f}' if r.latency_p50_ms else '-'):>7} "
            f"{(f'{r.latency_p99_ms:.2f}' if r.latency_p99_ms else '-'):>7} "
            f"{(f'{r.speedup:.2f}x' if r.speedup else '-'):>7} "
            f"{(f'{metric} {acc:.4f}' if acc is not None else '-'):>16} "
            f"{(f'{r.delta:+.2f}' if r.delta is not None else '-'):>6} "
            f"{(f'{r.size / 1e6:.2f}' if r.size else '-'):>7}"
        )
    det = results["models"]["eldet"]
    fp32_acc = next(r for r in det["report"]["results"] if r["target"] == "onnx-fp32")["accuracy"]
    print(
        f"\neldet after {det['train_seconds']:.0f} s of CPU training: mAP50 {fp32_acc['mAP50']:.3f}, "
        f"mAP50-95 {fp32_acc['mAP50_95']:.3f} on {det['val_samples']} held-out scenes (ONNX, agent decoder)"
    )
    print("\n== the fleet measures what it runs (3 simulated hardware keys, real artifacts timed on this CPU)")
    results["fleet"] = fleet_measurement(args.work, CompileReport.from_json(det["report"]), args.fleet_budget)
    print(results["fleet"]["table"])
    for hw, got in results["fleet"]["chosen"].items():
        print(f"  {hw}: serves {got['target']}: {got['reason']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
