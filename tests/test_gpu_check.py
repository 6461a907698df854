"""`tools/gpu_check.py` is the one script a GPU host runs; a broken script wastes a scarce GPU lease.
Here it runs its quick mode on the CPU (no GPU on this machine, which it must say) and its report must
carry every figure the GPU run is read for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    if report["device"] == "cpu":
        assert r.stdout.startswith("NO GPU: running the same steps on the CPU")
    assert set(report["raw_images_per_s"]) == {"1", "8", "32"}
    assert report["one_camera_unpaced"]["loop_fps"] > 0
    assert [x["cameras"] for x in report["runs"]] == [1, 2]
    for x in report["runs"]:
        for loop in (x["batch_1"], x["batched"]):
            assert loop["served_fps"] > 0 and loop["offered_fps"] > 0 and loop["batch_histogram"]
    assert report["capabilities"]["agent_version"]
    # the compile targets measured per provider and batch: the CPU here, CUDA too on a GPU host
    compiled = report["compile"]
    assert "CPUExecutionProvider" in compiled["providers"] and compiled["host"]
    for target in ("onnx-fp32", "onnx-fp16"):
        cells = {(m["device_class"], m["batch"]) for m in compiled["targets"][target] if m.get("p50_ms")}
        assert {("cpu", 1), ("cpu", 8)} <= cells
        if report["device"] == "gpu":
            assert ("cuda", 1) in cells
    # the training step: images/s per device, against the bare model's forward + backward
    cpu = report["train"]["devices"]["cpu"]
    assert cpu["images_per_s"] > 0 and cpu["ceiling_images_per_s"] > 0 and cpu["of_ceiling"] > 0
    if report["device"] == "gpu":
        assert report["train"]["gpu_over_cpu"] > 0
