"""Many cameras on one box: the batch-1 loop and the batched loop side by side, in one run on this machine.

For each model (the zoo's mobilenet_v3_small and resnet18 at 224, exported with a dynamic batch axis), N
copies of a 640x480 synthetic camera paced at --fps each go through the agent's loop at batch 1 and at
batch N: frames offered and served, dropped, staleness p99, the slowest camera and the batch sizes. Also
the model alone at batch 1 / 2 / 4 / 8. Prints a table, writes JSON (default bench-results/bench_cameras.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.bench import describe_model, raw_batch_fps, run_cameras  # noqa: E402
from edge_agent.runtimes import RuntimeOptions  # noqa: E402
from model_zoo.datasets.synthetic_video import write_color_video  # noqa: E402
from model_zoo.models import build, export_onnx  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v3_small,resnet18")
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_cameras.json")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    video = write_color_video(work / "cam.avi", seconds=10.0, fps=int(a.fps), size=(640, 480))
    rows = []
    for name in a.models.split(","):
        path = work / f"{name}.onnx"
        export_onnx(build(name, 10, 224), name, 224, str(path))
        raw = raw_batch_fps(describe_model(path), (1, 2, 4, 8), 2.0, RuntimeOptions())
        r = run_cameras(path, str(video), a.cameras, a.cameras, a.seconds, a.fps)
        rows.append({**r, "model": name, "raw_images_per_s": raw})
    print(f"{a.cameras} cameras x {a.fps:g} fps, 640x480, {rows[0]['cores']} cores")
    print(f"{'model':<20} {'loop':<9} {'offered':>8} {'served':>8} {'dropped':>8} {'p99 ms':>8}  batches")
    for r in rows:
        for key in ("batch_1", f"batch_{a.cameras}"):
            x = r[key]
            print(
                f"{r['model']:<20} {key:<9} {x['offered_fps']:>8.1f} {x['served_fps']:>8.1f} {x['dropped']:>8} "
                f"{x['staleness_ms_p99']:>8.1f}  {x['batch_histogram']}"
            )
        print(f"{'':<20} served batched / batch-1: {r['served_ratio']}   model alone by batch: {r['raw_images_per_s']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
