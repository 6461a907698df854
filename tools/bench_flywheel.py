"""Data flywheel benchmarks on this machine, all from one run with fixed seeds.

1. Label efficiency: a detector trained on the `easy` (day) domain meets the `night` domain. Each strategy
   picks K of the night pool to label (labels come from the generator's exact ground truth: a simulated
   annotator), the detector is fine-tuned on day + those K, and scored on a held-out night set. Random
   is the baseline and is reported as measured, good or bad.
2. One flywheel turn: night mAP before -> after (the best strategy), and the day holdout before -> after.
3. Loop fps with miners + near-duplicate filter on / off, interleaved runs on the same video (target >= 0.97);
   "off" keeps a no-op sink, as the agent always runs its event sink: the ratio is the miners' own cost.
4. Near-duplicate lookup over 100k hashes.
Prints a table, writes JSON (default bench-results/bench_flywheel.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.protocol.manifest import InputSpec  # noqa: E402
from model_zoo.datasets.store import DatasetStore, DatasetVersion, synthesize  # noqa: E402
from model_zoo.evaluate import evaluate_onnx  # noqa: E402
from model_zoo.models import build, export_onnx  # noqa: E402
from model_zoo.train import train  # noqa: E402

SIZE = 256


def onnx_of(ckpt: Path, out: Path) -> Path:
    import torch

    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    m = build("eldet", len(ck["classes"]), ck["size"])
    m.load_state_dict(ck["state_dict"])
    export_onnx(m, "eldet", ck["size"], str(out))
    return out


def predict_pool(onnx: Path, pool: DatasetVersion) -> list:
    """The base model's detections on every pool image, through the agent's runtime and decoder."""
    from edge_agent.decoders.base import decoder_for
    from edge_agent.preprocess import Preprocessor
    from edge_agent.protocol.manifest import DecoderSpec
    from edge_agent.runtimes import RuntimeOptions, create_runtime

    spec = InputSpec(shape=(1, 3, SIZE, SIZE), resize="letterbox")
    rt = create_runtime("onnxruntime", onnx, RuntimeOptions())
    pre, dec = Preprocessor(spec, "numpy"), decoder_for(DecoderSpec(type="yolov8", conf_threshold=0.05), 3)
    out = []
    for s in pool.samples:
        x, tf = pre(pool.load_image(s))
        out.append(dec(rt.run(x), tf))
    rt.close()
    return out


def pick(strategy: str, preds: list, k: int, rng: np.random.Generator) -> list[int]:
    n = len(preds)
    jitter = rng.random(n) * 1e-6  # ties broken at random, the same way for every strategy
    if strategy == "random":
        return list(rng.choice(n, size=k, replace=False))
    if strategy == "confidence":  # most detections in the uncertain band
        score = np.array([np.sum((d.scores >= 0.25) & (d.scores <= 0.6)) for d in preds], float)
    elif strategy == "least_confident":  # the weakest of the confident detections, or nothing found
        score = np.array([1.0 - float(d.scores.max()) if len(d) else 1.0 for d in preds])
    elif strategy == "rare":  # images predicted to hold the rarest class
        counts = np.bincount(
            np.concatenate([d.class_ids[d.scores >= 0.25] for d in preds] + [np.zeros(0, int)]), minlength=3
        )
        rare = int(np.argmin(counts))
        score = np.array([np.sum((d.class_ids == rare) & (d.scores >= 0.25)) for d in preds], float)
    else:
        raise ValueError(strategy)
    return list(np.argsort(-(score + jitter))[:k])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base-minutes", type=float, default=3.0, help="day-domain training budget")
    ap.add_argument("--day", type=int, default=1200)
    ap.add_argument("--pool", type=int, default=400, help="unlabelled night scenes the strategies choose from")
    ap.add_argument("--holdout", type=int, default=200, help="night scenes held out for scoring")
    ap.add_argument("--k", type=int, default=60, help="label budget per strategy")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per strategy")
    ap.add_argument("--strategies", default="random,confidence,least_confident,rare")
    ap.add_argument("--loop-seconds", type=float, default=6.0)
    ap.add_argument("--pairs", type=int, default=4, help="interleaved off/on loop runs")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-results" / "flywheel-work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_flywheel.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = DatasetStore(args.work / "data")
    res: dict = {"machine": {"platform": platform.platform()}, "args": {k: str(v) for k, v in vars(args).items()}}
    spec = InputSpec(shape=(1, 3, SIZE, SIZE), resize="letterbox")

    day = store.load("day") if store.versions("day") else synthesize(store, "day", "easy", args.day, seed=1)
    base_ck = args.work / "base" / "best.pt"
    if not base_ck.exists():
        print(f"== training the day-domain detector ({args.base_minutes} min)", flush=True)
        train(day, "eldet", args.work / "base", epochs=12, lr=3e-3, max_minutes=args.base_minutes, progress_mode="none")
    base_onnx = onnx_of(base_ck, args.work / "base.onnx")
    night_pool = (
        store.load("pool")
        if store.versions("pool")
        else synthesize(store, "pool", "night", args.pool, 50, val_fraction=0.01)
    )
    night_hold = (
        store.load("nightval")
        if store.versions("nightval")
        else synthesize(store, "nightval", "night", args.holdout, 51, val_fraction=0.99)
    )
    day_val = day.split("val")

    def score(onnx: Path) -> dict:
        n = evaluate_onnx(onnx, replace(night_hold, samples=tuple(night_hold.samples)), "detect", spec, split="val")
        d = evaluate_onnx(onnx, replace(day, samples=tuple(day_val)), "detect", spec, split="val")
        return {"night": n, "day": d}

    before = score(base_onnx)
    print(f"base: night mAP50 {before['night']['mAP50']:.3f}, day mAP50 {before['day']['mAP50']:.3f}", flush=True)
    preds = predict_pool(base_onnx, night_pool)
    results = {}
    for strat in [s for s in args.strategies.split(",") if s]:
        rng = np.random.default_rng(7)
        chosen = [night_pool.samples[i] for i in pick(strat, preds, args.k, rng)]
        labelled = [replace(s, split="train") for s in chosen]  # the simulated annotator: exact generator boxes
        dv = replace(day, samples=tuple(day.samples) + tuple(labelled), name=f"ft-{strat}")
        t0 = time.monotonic()
        print(f"== {strat}: fine-tuning on day + {len(labelled)} labelled night scenes", flush=True)
        train(dv, "eldet", args.work / strat, epochs=args.epochs, lr=1e-3, init_from=base_ck, progress_mode="none")
        after = score(onnx_of(args.work / strat / "last.pt", args.work / f"{strat}.onnx"))
        objects = int(sum(len(s.labels) for s in labelled))
        results[strat] = {**after, "labels": len(labelled), "objects": objects, "seconds": round(time.monotonic() - t0)}
        n, d = after["night"], after["day"]
        print(f"   night mAP50 {n['mAP50']:.3f} mAP50-95 {n['mAP50_95']:.3f}; day {d['mAP50']:.3f}", flush=True)
    res["label_efficiency"] = {"before": before, "k": args.k, "strategies": results}

    # loop fps with miners on / off
    from edge_agent.bench import describe_model
    from edge_agent.camera.loop import InferenceLoop
    from edge_agent.camera.sources import FrameSource
    from edge_agent.flywheel.config import Limits, MiningConfig, StrategyConfig
    from edge_agent.flywheel.phash import HashIndex, phash
    from edge_agent.flywheel.sink import MiningSink
    from edge_agent.flywheel.spool import Spool
    from edge_agent.runtimes import RuntimeOptions
    from model_zoo.datasets.synthetic_video import write_scene_video

    video, _ = write_scene_video(args.work / "night.avi", seconds=20, preset_name="night", seconds_per_scene=0.5)
    bm = describe_model(base_onnx, ["circle", "square", "triangle"], resize="letterbox")
    cfg = MiningConfig(
        enabled=True,
        strategies={
            "confidence": StrategyConfig(params={"low": 0.25, "high": 0.6}, limits=Limits(per_minute=10_000)),
            "random": StrategyConfig(params={"share": 0.05}, limits=Limits(per_minute=10_000)),
        },
        per_source_per_hour=100_000,
    )

    def loop_fps(mining: bool) -> tuple[float, dict]:
        src = FrameSource(str(video), loop_file=True, pace_file=False).start()
        # the agent always runs a sink (its detection events); "off" keeps a no-op one so the ratio is the miners' cost
        sinks: list = [lambda fr: None]
        sink = None
        if mining:
            sink = MiningSink(
                cfg,
                Spool(args.work / f"spool-{time.monotonic_ns()}"),
                "bench",
                lambda m, v: ("circle", "square", "triangle"),
            )
            sinks.append(sink)
        loop = InferenceLoop([src], sinks=sinks)
        loop.swap(bm.load(RuntimeOptions()))
        loop.start()
        time.sleep(1.0)
        f0, t0 = loop.stats.frames, time.perf_counter()
        time.sleep(args.loop_seconds)
        fps = (loop.stats.frames - f0) / (time.perf_counter() - t0)
        loop.stop()
        src.stop()
        return fps, (sink.counters if sink else {})

    runs = {"off": [], "on": []}
    counters = {}
    for i in range(args.pairs):
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            fps, c = loop_fps(mode == "on")
            runs[mode].append(fps)
            counters = c or counters
    ratio = float(np.median(np.array(runs["on"]) / np.array(runs["off"])))  # median of the paired ratios
    res["loop"] = {"fps_off": runs["off"], "fps_on": runs["on"], "on_over_off": round(ratio, 3), "counters": counters}

    idx = HashIndex(100_000)
    for h in np.random.default_rng(0).integers(0, 2**63, 100_000, dtype=np.int64):
        idx.add(int(h))
    probe = phash(night_pool.load_image(night_pool.samples[0]))
    t0 = time.perf_counter()
    for _ in range(200):
        idx.nearest(probe)
    lookup_ms = (time.perf_counter() - t0) / 200 * 1000
    res["dedup_lookup_ms_100k"] = round(lookup_ms, 4)

    best = max(results, key=lambda s: results[s]["night"]["mAP50_95"]) if results else None
    rows = [
        (
            "base (day only): night mAP50 / mAP50-95",
            f"{before['night']['mAP50']:.3f} / {before['night']['mAP50_95']:.3f}",
        )
    ]
    for s, r in results.items():
        rows.append(
            (
                f"{s} (K={args.k}, {r['objects']} boxes): night mAP50 / mAP50-95",
                f"{r['night']['mAP50']:.3f} / {r['night']['mAP50_95']:.3f}",
            )
        )
    if best:
        rows.append(
            (
                "one turn (best strategy): night mAP50-95 before -> after",
                f"{before['night']['mAP50_95']:.3f} -> {results[best]['night']['mAP50_95']:.3f} ({best})",
            )
        )
        rows.append(
            (
                "day holdout mAP50-95 before -> after",
                f"{before['day']['mAP50_95']:.3f} -> {results[best]['day']['mAP50_95']:.3f}",
            )
        )
    rows.append(("loop fps miners off / on", f"{np.mean(runs['off']):.1f} / {np.mean(runs['on']):.1f}"))
    rows.append(("loop fps on / off, median of paired runs (target >= 0.97)", f"{ratio:.3f}"))
    rows.append(("near-duplicate lookup, 100k hashes (ms)", f"{lookup_ms:.3f}"))
    print()
    print(f"{'figure':<62} value")
    for name, value in rows:
        print(f"{name:<62} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
