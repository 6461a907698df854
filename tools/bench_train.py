"""Training speed on this machine, before and after a change, side by side in one run.

The same synthetic dataset, model and settings are trained by two source trees: this one and a baseline
revision (checked out in a temporary git worktree), each as `python -m model_zoo.train` in its own process,
one after the other. Printed: seconds per epoch (median of the epochs after the first, which also decodes),
training images per second, the detector's mAP50 after the last epoch, and the wall time; then the ratio.

    python tools/bench_train.py                        # baseline: the revision before the loader change
    python tools/bench_train.py --baseline HEAD~3 --scenes 800 --epochs 4 --workers 0,1
    python tools/bench_train.py --ray        # also: the same run as a Ray Train job, 1 and 2 workers, on a
                                             # two-node Ray cluster started here (one CPU per node)
    python tools/bench_train.py --compile --no-baseline   # also: this tree with torch.compile (--compile)
Writes JSON (default bench-results/bench_train.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.datasets.store import DatasetStore, synthesize  # noqa: E402

BASELINE = "b60148c"  # the last revision with the in-process, one-image-at-a-time loader


def run_tree(
    tree: Path, store: Path, out: Path, a: argparse.Namespace, workers: int | None, compiled: bool = False
) -> dict:
    cmd = [sys.executable, "-m", "model_zoo.train", "--data", str(store), "--dataset", "shapes:1", "--model", "eldet",
           "--epochs", str(a.epochs), "--batch", str(a.batch), "--size", str(a.size), "--out", str(out),
           "--progress", "none", "--device", "cpu", "--seed", "0"]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if compiled:
        cmd.append("--compile")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tree}: training failed:\n{r.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return _figures(out, wall, summary.get("loader_workers", 0))


def _figures(out: Path, wall: float, workers: int) -> dict:
    """Seconds per epoch (median after the first, which also decodes), images/s, final mAP50, wall time."""
    epochs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    later = [e["seconds"] for e in epochs[1:]] or [epochs[0]["seconds"]]
    summary = json.loads((out / "summary.json").read_text())
    per_epoch = statistics.median(later)
    return {
        "epoch_s_first": epochs[0]["seconds"],
        "epoch_s": per_epoch,
        "images_per_s": round(summary["train_samples"] / per_epoch, 1),
        "mAP50": epochs[-1].get("mAP50"),
        "wall_s": round(wall, 1),
        "workers": workers,
    }


def start_ray() -> tuple[str, list[str]]:
    """Two Ray nodes on this machine, one CPU each; (address, the command that stops them)."""
    import socket

    def port() -> int:
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            return int(sk.getsockname()[1])

    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head_port = port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={head_port}", f"--dashboard-port={port()}"]
    subprocess.run(
        [*head, f"--dashboard-agent-listen-port={port()}", *common], check=True, env=env, capture_output=True
    )
    second = [ray, "start", f"--address=127.0.0.1:{head_port}", f"--dashboard-agent-listen-port={port()}"]
    subprocess.run([*second, *common], check=True, env=env, capture_output=True)
    return f"127.0.0.1:{head_port}", [ray, "stop", "--force"]


def run_ray(store: Path, out: Path, a: argparse.Namespace, workers: int, address: str) -> dict:
    """The same training as a Ray Train job of `workers` workers (a driver process, as the server submits it)."""
    argv = ["--data", str(store), "--dataset", "shapes:1", "--model", "eldet", "--epochs", str(a.epochs),
            "--batch", str(a.batch), "--size", str(a.size), "--out", str(out), "--progress", "none",
            "--device", "cpu", "--seed", "0"]  # fmt: skip
    code = (
        "import sys, json; from model_zoo.training.ray_train import train_on_ray; "
        f"train_on_ray({argv!r}, {workers}, 0.0, __import__('pathlib').Path({str(out / 'ray')!r}))"
    )
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"Ray training with {workers} workers failed:\n{r.stderr[-3000:]}")
    return _figures(out, wall, workers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare against")
    ap.add_argument("--scenes", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", default="0", help="comma-separated loader worker counts for this tree")
    ap.add_argument("--ray", action="store_true", help="also train as a Ray Train job with 1 and 2 workers")
    ap.add_argument("--compile", action="store_true", help="also this tree with torch.compile (first worker count)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline revision")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_train.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = work / "data"
    synthesize(DatasetStore(store), "shapes", "easy", a.scenes, seed=1, size=(320, 240))
    base = work / "baseline"
    rows: dict[str, dict] = {}
    print(f"eldet, {a.scenes} scenes at {a.size} px, batch {a.batch}, {a.epochs} epochs, CPU ({os.cpu_count()} cores)")
    if not a.no_baseline:
        add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), a.baseline]
        subprocess.run(add, check=True, capture_output=True)
        try:
            rows[f"baseline {a.baseline}"] = run_tree(base, store, work / "run-base", a, None)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    for w in [int(x) for x in a.workers.split(",") if x]:
        rows[f"this tree, {w} workers"] = run_tree(ROOT, store, work / f"run-{w}", a, w)
    if a.compile:
        w = int(a.workers.split(",")[0])
        rows[f"torch.compile, {w} workers"] = run_tree(ROOT, store, work / "run-compiled", a, w, compiled=True)
    if a.ray:
        address, stop = start_ray()
        try:
            for n in (1, 2):
                rows[f"Ray Train, {n} worker{'s' if n > 1 else ''}"] = run_ray(store, work / f"ray-{n}", a, n, address)
        finally:
            subprocess.run(stop, capture_output=True)
    ref = next(iter(rows.values()))
    print(f"{'code':<26} {'epoch s':>8} {'1st epoch s':>11} {'images/s':>9} {'vs base':>8} {'mAP50':>7} {'wall s':>7}")
    for name, r in rows.items():
        ratio = r["images_per_s"] / ref["images_per_s"]
        print(f"{name:<26} {r['epoch_s']:>8.1f} {r['epoch_s_first']:>11.1f} {r['images_per_s']:>9.1f} "
              f"{ratio:>7.2f}x {r['mAP50'] or 0:>7.3f} {r['wall_s']:>7.1f}")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"settings": vars(a) | {"out": str(a.out)}, "runs": rows}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
