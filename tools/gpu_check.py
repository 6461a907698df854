"""One prepared check for a GPU host: what the agent detects, the model alone at batch 1/8/32, and N paced
cameras through today's batch-1 loop and the batched loop, side by side in one run. Prints a table and
writes JSON (default bench-results/gpu_check.json).

    python tools/gpu_check.py                 # resnet50 at 224 (torchvision), 640x480 cameras at 30 fps
    python tools/gpu_check.py --quick         # a tiny model and 1-2 cameras: the smoke run `make test` does

It needs the agent's packages (`pip install 'edgeloop[agent-gpu]'` on a GPU box) and, for resnet50, torch
and torchvision to export the model. Without a usable GPU it runs the same steps on the CPU and says so at
the top. It ends with the compile targets (fp32, fp16) measured on every execution provider the host has,
at batch 1 and the agent's batch (what `edgeloop compile` puts in the target table there), and a training
step: the detector trained on the GPU and on the same host's CPU (images/s each, and their ratio), against
the ceiling of forward + backward of the bare model at the same batch on random tensors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.bench import cameras_run, describe_model, raw_batch_fps, run  # noqa: E402
from edge_agent.capabilities import detect, device_kind  # noqa: E402
from edge_agent.runtimes import RuntimeOptions  # noqa: E402
from model_zoo.builders.color_classifier import build_color_classifier  # noqa: E402
from model_zoo.datasets.synthetic_video import write_color_video  # noqa: E402


def export_torchvision(name: str, size: int, path: Path) -> Path:
    """A torchvision classifier (random weights: speed does not depend on them) with a dynamic batch axis."""
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def compile_rows(model_path: Path, work: Path, seconds: float) -> dict[str, Any]:
    """The compile step's per-provider measurement of the fp32 and fp16 targets of this model."""
    from model_zoo.compile.measure import describe_input, host_info, measure_providers
    from model_zoo.compile.quantize import build_fp16

    host = host_info()
    shape = describe_input(model_path)
    fp16 = work / "fp16.onnx"
    build_fp16(model_path, fp16)
    rows = {
        t: measure_providers(p, shape, host["providers"], seconds)
        for t, p in (("onnx-fp32", model_path), ("onnx-fp16", fp16))
    }
    return {"host": host["key"], "providers": host["providers"], "targets": rows}


def train_check(work: Path, quick: bool) -> dict[str, Any]:
    """The detector's training throughput per device, and the bare model's forward+backward ceiling."""
    import torch

    from model_zoo.datasets.store import DatasetStore, synthesize
    from model_zoo.models import build
    from model_zoo.train import train
    from model_zoo.training.loss import detection_loss

    size, batch = (128, 8) if quick else (256, 32)
    store = DatasetStore(work / "data")
    dv = synthesize(store, "shapes", "easy", 64 if quick else 1200, seed=1, size=(size + 64, size))
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    out: dict[str, Any] = {"size": size, "batch": batch, "devices": {}}
    for dev in devices:
        epochs = 1 if quick or dev == "cpu" else 3
        s = train(dv, "eldet", work / f"train-{dev}", epochs=epochs, batch=batch, size=size, progress_mode="none",
                  device_name=dev)  # fmt: skip
        model = build("eldet", len(dv.classes), size).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.rand(batch, 3, size, size, device=dev)
        empty = [torch.zeros((0, 4))] * batch
        labels = [torch.zeros(0, dtype=torch.int64)] * batch
        amp = dev == "cuda"
        dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        runs = 3 if quick else 30
        for i in range(runs + 3):
            if i == 3:
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast(dev, dtype=dtype, enabled=amp):
                logits, ltrb = model(x)
                loss = detection_loss(model, logits.float(), ltrb.float(), empty, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        ceiling = runs * batch / (time.perf_counter() - t0)
        out["devices"][dev] = {
            "images_per_s": s["images_per_s"],
            "ceiling_images_per_s": round(ceiling, 1),
            "of_ceiling": round(s["images_per_s"] / ceiling, 3),
            "loader_workers": s["loader_workers"],
            "amp": s["amp"],
            "seconds": s["seconds"],
        }
    if "cuda" in out["devices"]:
        out["gpu_over_cpu"] = round(out["devices"]["cuda"]["images_per_s"] / out["devices"]["cpu"]["images_per_s"], 2)
        # torch.compile, chosen by measurement: the same GPU run compiled (its compile time is in the first epoch)
        s = train(dv, "eldet", work / "train-cuda-compiled", epochs=1 if quick else 3, batch=batch, size=size,
                  progress_mode="none", device_name="cuda", compile=True)  # fmt: skip
        out["compiled"] = {
            "images_per_s": s["images_per_s"],
            "over_eager": round(s["images_per_s"] / out["devices"]["cuda"]["images_per_s"], 2),
            "seconds": s["seconds"],
            "eager_seconds": out["devices"]["cuda"].get("seconds"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 1-2 cameras, 1 s runs (a smoke run)")
    p.add_argument("--model", default="resnet50", help="torchvision classifier to export (default resnet50)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cameras", default="1,8,16,32,64", help="camera counts to run")
    p.add_argument("--fps", type=float, default=30.0, help="each camera's frame rate")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu_check.json")
    a = p.parse_args(argv)
    t_start = time.monotonic()
    caps = detect()
    on_gpu = caps.gpu is not None and "CUDAExecutionProvider" in caps.providers
    print("GPU: " + f"{caps.gpu} ({device_kind(caps)})" if on_gpu else "NO GPU: running the same steps on the CPU")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    cams = [1, 2] if a.quick else [int(n) for n in a.cameras.split(",")]
    seconds = 1.0 if a.quick else a.seconds
    if a.quick:
        model_path, model_name = build_color_classifier(work / "color.onnx", batch="batch"), "color-classifier"
        video = write_color_video(work / "cam.avi", seconds=3.0, fps=int(a.fps), size=(320, 240))
    else:
        model_path, model_name = export_torchvision(a.model, a.size, work / f"{a.model}.onnx"), a.model
        video = write_color_video(work / "cam.avi", seconds=10.0, fps=int(a.fps), size=(640, 480))
    options = RuntimeOptions()
    bm = describe_model(model_path)
    raw = raw_batch_fps(bm, (1, 8, 32), 1.0 if a.quick else 3.0, options)
    # one camera on a model slower than decode: the loop should lose nothing to its own machinery
    single = run(model_path, str(video), seconds)
    bound = min(single["decode_fps"], single["raw_fps"]) or 1.0
    one_camera = {k: single[k] for k in ("raw_fps", "decode_fps", "loop_fps", "staleness_ms_p99")}
    one_camera["loop_over_bound"] = round(single["loop_fps"] / bound, 3)
    runs: list[dict[str, Any]] = []
    for n in cams:
        one = cameras_run(bm, str(video), n, seconds, options, 1, a.fps)
        many = cameras_run(bm, str(video), n, seconds, options, n, a.fps, decode="auto", gpu=on_gpu)
        runs.append({"cameras": n, "batch_1": one, "batched": many})
    report = {
        "device": "gpu" if on_gpu else "cpu",
        "capabilities": caps.model_dump(),
        "model": model_name,
        "raw_images_per_s": raw,
        "one_camera_unpaced": one_camera,
        "cameras_fps": a.fps,
        "runs": runs,
        "compile": compile_rows(model_path, work, 0.5 if a.quick else 2.0),
        "train": train_check(work, a.quick),
        "seconds": round(time.monotonic() - t_start, 1),
    }
    print(f"model {model_name}: raw images/s by batch {raw}")
    print(
        f"one camera, unpaced: loop {one_camera['loop_fps']} fps, decode {one_camera['decode_fps']}, model "
        f"{one_camera['raw_fps']}: loop / min(decode, model) = {one_camera['loop_over_bound']}"
    )
    print(f"{'cams':>5} | {'batch-1 served/offered':>23} {'drop':>6} {'p99 ms':>7} | {'batched served/offered':>23} "
          f"{'drop':>6} {'p99 ms':>7}  batches")  # fmt: skip
    for r in runs:
        o, m = r["batch_1"], r["batched"]
        print(
            f"{r['cameras']:>5} | {o['served_fps']:>10.1f} / {o['offered_fps']:<10.1f} {o['dropped']:>6} "
            f"{o['staleness_ms_p99']:>7.1f} | {m['served_fps']:>10.1f} / {m['offered_fps']:<10.1f} {m['dropped']:>6} "
            f"{m['staleness_ms_p99']:>7.1f}  {m['batch_histogram']}"
        )
    if runs:
        last = runs[-1]["batched"]
        note = f" ({last['decoder_note']})" if last["decoder_note"] else ""
        print(f"batched loop decoded with {last['decoders']}{note}")
    for t, rows in report["compile"]["targets"].items():
        cells = ", ".join(f"{m['device_class']} b{m['batch']} {m.get('p50_ms', 'failed')} ms" for m in rows)
        print(f"compile {t}: {cells}")
    for dev, t in report["train"]["devices"].items():
        print(f"train eldet on {dev}: {t['images_per_s']} images/s, {t['of_ceiling']} of the bare model's "
              f"{t['ceiling_images_per_s']} (forward + backward, batch {report['train']['batch']})")  # fmt: skip
    if "gpu_over_cpu" in report["train"]:
        print(f"train: GPU / this host's CPU = {report['train']['gpu_over_cpu']}x")
    if "compiled" in report["train"]:
        c = report["train"]["compiled"]
        print(f"train with torch.compile: {c['images_per_s']} images/s, {c['over_eager']}x eager "
              f"({c['seconds']} s in all against {c['eager_seconds']} s)")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {a.out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
