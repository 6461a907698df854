"""Training, export, evaluation and compile, on the CPU with torch: the detector really learns, the ONNX
artifact scores the same through the agent's decoder as the model did in torch, DDP keeps replicas in
sync, and the compile step measures every target and refuses the ones that are slower or less accurate.
These are the numbers a user trusts before a model reaches a device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is installed by `make test`")

from edge_agent.protocol.manifest import InputSpec  # noqa: E402
from edge_agent.runtimes.base import extract_trt_calibration, trt_quantization  # noqa: E402
from model_zoo.compile import (  # noqa: E402
    AGENT_BATCH,
    CompileError,
    TargetResult,
    compile_checkpoint,
    host_info,
    recommend,
    table_text,
    trt_calibration_cache,
)
from model_zoo.compile.quantize import CalibReader  # noqa: E402
from model_zoo.datasets.store import DatasetStore, synthesize  # noqa: E402
from model_zoo.evaluate import evaluate_onnx  # noqa: E402
from model_zoo.models import build, export_onnx, kind  # noqa: E402
from model_zoo.train import train  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short CPU training run of the detector on easy synthetic scenes (about 30 s on 2 cores)."""
    d = tmp_path_factory.mktemp("zoo")
    store = DatasetStore(d / "data")
    dv = synthesize(store, "shapes", "easy", 300, seed=1, size=(128, 128))
    summary = train(dv, "eldet", d / "run", epochs=8, batch=16, lr=4e-3, size=128, progress_mode="none")
    history = [json.loads(ln) for ln in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"dir": d, "store": store, "dv": dv, "summary": summary, "history": history, "ckpt": d / "run" / "best.pt"}


def test_detector_learns_on_the_cpu(trained: dict) -> None:
    h = trained["history"]
    assert len(h) == 8 and h[-1]["loss"] < h[0]["loss"] * 0.7
    assert h[-1]["mAP50"] >= 0.35, h
    assert h[-1]["mAP50"] > 5 * max(h[0]["mAP50"], 0.01)
    assert trained["summary"]["best"]["mAP50"] == max(e["mAP50"] for e in h)
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    assert ck["dataset"] == {"ref": trained["dv"].ref, "id": trained["dv"].id} and ck["classes"] == [
        "circle",
        "square",
        "triangle",
    ]


def test_onnx_through_the_agent_decoder_scores_what_torch_scored(trained: dict, tmp_path: Path) -> None:
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    model = build("eldet", 3, 128)
    model.load_state_dict(ck["state_dict"])
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, "eldet", 128, str(onnx_path))
    mk = kind(ck["model"])
    spec = InputSpec(shape=(1, 3, ck["size"], ck["size"]), resize=mk.resize, mean=mk.mean, std=mk.std)
    got = evaluate_onnx(onnx_path, trained["dv"], "detect", spec)
    best = max(trained["history"], key=lambda e: e["mAP50"])
    assert abs(got["mAP50"] - best["mAP50"]) < 0.03, (got, best)
    assert abs(got["mAP50_95"] - best["mAP50_95"]) < 0.03, (got, best)


def test_resume_continues_from_the_last_checkpoint(trained: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((trained["dir"] / "run" / "last.pt").read_bytes())
    s = train(trained["dv"], "eldet", run, epochs=9, batch=16, size=128, resume=True, progress_mode="none")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 9 and s["epochs_run"] == 9


def test_compile_measures_every_target_and_picks_by_the_rules(trained: dict, tmp_path: Path) -> None:
    report = compile_checkpoint(trained["ckpt"], trained["dv"], tmp_path / "c", latency_seconds=0.4)
    rows = {r.target: r for r in report.results}
    assert list(rows) == ["onnx-fp32", "onnx-int8", "onnx-fp16", "tensorrt", "tensorrt-engine"]
    fp32, int8, fp16 = rows["onnx-fp32"], rows["onnx-int8"], rows["onnx-fp16"]
    for r in (fp32, int8, fp16):
        assert r.latency_p50_ms and r.latency_p99_ms and r.latency_p99_ms >= r.latency_p50_ms
        assert r.accuracy["mAP50"] > 0.2 and Path(r.path or "").stat().st_size == r.size
    assert int8.size and fp32.size and int8.size < fp32.size * 0.5
    assert int8.status == "built" or int8.status.startswith("rejected:")
    assert any("decode tail kept float" in n for n in int8.notes)
    # the TensorRT artifact is explicit quantization (TensorRT 10): symmetric int8 Q/DQ, no calibration cache
    trt = rows["tensorrt"]
    assert trt.status == "built" or trt.status.startswith("rejected:"), trt.status
    assert trt_quantization(Path(trt.path or "")) == "explicit"
    assert extract_trt_calibration(Path(trt.path or ""), tmp_path / "engines") is None
    graph = onnx.load(trt.path or "").graph
    inits = {i.name: i for i in graph.initializer}
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(onnx.numpy_helper.to_array(inits[n.input[2]]).dtype == np.int8 for n in qs)
    assert all(not onnx.numpy_helper.to_array(inits[n.input[2]]).any() for n in qs)  # zero points 0: symmetric
    assert trt.accuracy["mAP50"] > 0.2 and trt.delta is not None  # scored like every other target
    # each row holds a measurement per provider and batch: batch 1 and the agent's batch (a dynamic axis)
    assert {(m["device_class"], m["batch"]) for m in fp32.measurements} == {("cpu", 1), ("cpu", AGENT_BATCH)}
    assert all(m["provider"] == "CPUExecutionProvider" for m in fp32.measurements)
    assert report.host["key"] and report.host["providers"] == ["CPUExecutionProvider"]
    assert rows["tensorrt-engine"].status == "not built: no GPU" or torch.cuda.is_available()
    # the recommendation obeys the rules it states
    cpu = rows[report.recommended["cpu"]]
    assert cpu.latency_p50_ms is not None and fp32.latency_p50_ms is not None
    assert cpu.latency_p50_ms <= fp32.latency_p50_ms and (cpu.delta or 0) >= -report.budget_points
    assert report.recommended["cuda"] == "onnx-fp32"  # nothing measured on a GPU here
    assert "nothing measured on a cuda device here" in report.reasons["cuda"]
    assert report.host["key"] in report.reasons["cpu"]  # says which host measured it
    text = table_text(report)
    assert "not built: no GPU" in text and "recommended for cpu" in text
    assert f"cpu b{AGENT_BATCH} ms" in text and f"measured on: {report.host['key']}" in text


def test_compile_measures_on_the_gpu_where_there_is_one(trained: dict, tmp_path: Path) -> None:
    """On a GPU host the CUDA provider gets its own rows and the cuda class is recommended from them."""
    if "CUDAExecutionProvider" not in host_info()["providers"]:
        pytest.skip("no GPU here: the CUDA rows are measured by tools/gpu_check.py on a GPU host")
    report = compile_checkpoint(
        trained["ckpt"], trained["dv"], tmp_path / "c", targets=("onnx-fp32", "onnx-fp16"), latency_seconds=0.4
    )
    fp16 = report.result("onnx-fp16")
    assert fp16 is not None and fp16.latency("cuda") is not None and fp16.latency("cuda", AGENT_BATCH) is not None
    assert "nothing measured" not in report.reasons["cuda"]


def test_tensorrt_calibration_cache_uses_the_chosen_method(trained: dict, tmp_path: Path) -> None:
    """The cache path that stays (`--trt-int8 cache`, older TensorRT): its scales come from the method the
    user chose, and its header names the calibrator TensorRT must read it with."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    model = build(ck["model"], len(ck["classes"]), ck["size"])
    model.load_state_dict(ck["state_dict"])
    export_onnx(model, ck["model"], ck["size"], str(tmp_path / "m.onnx"))
    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    mk = kind(ck["model"])
    spec = InputSpec(shape=(1, 3, ck["size"], ck["size"]), resize=mk.resize, mean=mk.mean, std=mk.std)
    reader = CalibReader(trained["dv"], spec, 8)
    caches = {m: trt_calibration_cache(tmp_path / "pre.onnx", reader, tmp_path, m) for m in ("minmax", "percentile")}
    heads = {m: c.splitlines()[0] for m, c in caches.items()}
    assert heads == {"minmax": "TRT-8600-MinMaxCalibration", "percentile": "TRT-8600-EntropyCalibration2"}
    scales = {m: dict(ln.split(": ") for ln in c.splitlines()[1:]) for m, c in caches.items()}
    assert scales["minmax"].keys() == scales["percentile"].keys() and len(scales["minmax"]) > 10
    assert all(len(v) == 8 for v in scales["minmax"].values())  # big-endian float32, hex
    differ = [k for k in scales["minmax"] if scales["minmax"][k] != scales["percentile"][k]]
    assert len(differ) > len(scales["minmax"]) // 2  # the method decides the scales, not MinMax always


def _row(target: str, p50: float | None, delta: float | None, on: str | None = "cpu") -> TargetResult:
    return TargetResult(target, "built", latency_p50_ms=p50, delta=delta, measured_on=on)


def test_recommendation_refuses_slower_and_less_accurate_targets() -> None:
    host = {"gpu": None, "tensorrt": None}
    rec, why = recommend([_row("onnx-fp32", 2.0, 0.0), _row("onnx-int8", 2.9, -0.1)], 1.0, host)
    assert rec["cpu"] == "onnx-fp32" and "slower" in why["cpu"]  # INT8 slower than FP32: never chosen
    rec, _ = recommend([_row("onnx-fp32", 2.0, 0.0), _row("onnx-int8", 1.0, -1.5)], 1.0, host)
    assert rec["cpu"] == "onnx-fp32"  # faster but over the accuracy budget
    rec, why = recommend([_row("onnx-fp32", 2.0, 0.0), _row("onnx-int8", 1.0, -0.4)], 1.0, host)
    assert rec["cpu"] == "onnx-int8" and "2.0x" not in why["cpu"]
    rec, why = recommend([_row("onnx-fp32", 2.0, 0.0), _row("onnx-fp16", 0.5, 0.0)], 1.0, host)
    assert rec["cpu"] == "onnx-fp32" and rec["cuda"] == "onnx-fp32"  # fp16 measured on a CPU says nothing for GPUs


def test_int8_without_calibration_images_says_how_to_give_them(trained: dict, tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "data")
    val_only = synthesize(store, "v", "easy", 6, seed=5, size=(128, 128), val_fraction=0.999)
    assert not val_only.split("train")
    with pytest.raises(CompileError, match="onnx-int8 needs calibration images: .*--dataset"):
        compile_checkpoint(trained["ckpt"], val_only, tmp_path / "c", targets=("onnx-int8",), latency_seconds=0.1)
    with pytest.raises(CompileError, match="unknown targets"):
        compile_checkpoint(trained["ckpt"], trained["dv"], tmp_path / "c2", targets=("coreml",))


def test_ddp_on_two_cpu_processes_keeps_replicas_in_sync(trained: dict, tmp_path: Path) -> None:
    """torchrun with the gloo backend: two processes, each on half the data, identical weights at the end."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    cmd += ["model_zoo.train", "--data", str(trained["store"].root), "--dataset", "shapes:1", "--epochs", "1"]
    cmd += ["--size", "128", "--batch", "8", "--out", str(tmp_path / "ddp"), "--progress", "json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    reports = [e["event"] for e in events if e["event"] != "progress"]  # ticks inside a slow epoch aside
    assert reports == ["epoch", "done"], "only rank 0 reports"
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["ddp"] == {"world": 2, "backend": "gloo", "in_sync": True}


def test_classifier_trains_and_scores_top1_through_the_agent(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "data")
    dv = synthesize(store, "cls", "easy", 90, seed=2, size=(64, 64), task="classify")
    assert dv.task == "classify" and all(len(s.labels) == 1 and not s.boxes for s in dv.samples)
    s = train(dv, "mobilenet_v3_small", tmp_path / "run", epochs=2, batch=16, size=64, progress_mode="none")
    assert 0.0 <= s["best"]["top1"] <= 1.0
    report = compile_checkpoint(
        tmp_path / "run" / "best.pt", dv, tmp_path / "c", targets=("onnx-fp32",), latency_seconds=0.2
    )
    fp32 = report.results[0]
    assert report.metric == "top1" and fp32.accuracy["top1"] == pytest.approx(s["best"]["top1"], abs=0.06)
    with pytest.raises(ValueError, match="is a classify model but .* is a detect dataset"):
        det = synthesize(store, "det", "easy", 10, seed=2, size=(64, 64))
        train(det, "mobilenet_v3_small", tmp_path / "x", epochs=1, size=64, progress_mode="none")


def test_weights_the_user_gives_are_loaded_and_foreign_files_refused(tmp_path: Path) -> None:
    """Pretrained weights come from a file the user supplies (nothing is fetched from a hub): a plain
    torchvision-style state dict loads into the matching tensors; the classifier head is re-initialised."""
    import torchvision

    src = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    store = DatasetStore(tmp_path / "data")
    dv = synthesize(store, "cls", "easy", 30, seed=4, size=(64, 64), task="classify")
    train(dv, "mobilenet_v3_small", tmp_path / "run", epochs=1, size=64, lr=1e-9,
          init_from=tmp_path / "imagenet.pth", progress_mode="none")  # fmt: skip
    got = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["state_dict"]
    first = "features.0.0.weight"
    assert torch.allclose(got[first], src.state_dict()[first], atol=1e-5), "the given weights were loaded"
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="none of its tensors belong"):
        train(dv, "mobilenet_v3_small", tmp_path / "x", epochs=1, size=64, init_from=tmp_path / "other.pth")


def test_evaluation_gate_rejects_a_candidate_that_regresses_on_the_holdout(trained: dict, tmp_path: Path) -> None:
    from fleet_server.jobs.worker import evaluation_gate

    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    good, untrained = build("eldet", 3, 128), build("eldet", 3, 128)
    good.load_state_dict(ck["state_dict"])
    export_onnx(good, "eldet", 128, str(tmp_path / "good.onnx"))
    export_onnx(untrained, "eldet", 128, str(tmp_path / "bad.onnx"))
    report = {"task": "detect", "metric": "mAP50_95", "input_spec": {"shape": [1, 3, 128, 128], "resize": "letterbox"}}
    p = {
        "datasets_dir": str(trained["store"].root),
        "holdout_dataset": "shapes:1",
        "dataset": "shapes",
        "dataset_version": 1,
        "budget_points": 1.0,
    }
    gate = evaluation_gate(tmp_path / "bad.onnx", tmp_path / "good.onnx", p, report)
    assert not gate["passed"] and gate["holdout"]["delta_points"] < -1.0 and "past the budget" in gate["reason"]
    assert gate["holdout"]["current"] > gate["holdout"]["candidate"]
    same = evaluation_gate(tmp_path / "good.onnx", tmp_path / "good.onnx", p, report)
    assert same["passed"] and same["holdout"]["delta_points"] == 0.0


def test_reviewed_hard_samples_are_repeated_to_their_share_of_an_epoch(trained: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    dv = trained["dv"]
    train_s = dv.split("train")
    marked = {s.sha256 for s in train_s[:4]}
    samples = tuple(replace(s, source=f"sample:{i}") if s.sha256 in marked else s for i, s in enumerate(dv.samples))
    hard_dv = replace(dv, samples=samples)
    s = train(hard_dv, "eldet", tmp_path / "r", epochs=1, size=128, hard_share=0.25, progress_mode="none")
    others = len(train_s) - 4
    assert s["train_samples"] == others + 4 * min(20, int(0.25 * others / (0.75 * 4)))
    plain = train(hard_dv, "eldet", tmp_path / "p", epochs=1, size=128, progress_mode="none")
    assert plain["train_samples"] == len(train_s)
