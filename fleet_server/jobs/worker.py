"""One job, in its own process: `python -m fleet_server.jobs.worker JOB_DIR`.

Reads JOB_DIR/params.json, prints one JSON object per line (progress events the runner stores), writes
JOB_DIR/result.json on success and exits 0; on a user error it prints {"event": "error", "message": …}
and exits 2. It never touches the database: the runner, in the server, registers what it produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.protocol.manifest import InputSpec, parse_ref
from fleet_server.procs import die_with_parent
from model_zoo.compile import DEFAULT_TARGETS, compile_checkpoint
from model_zoo.datasets.store import DatasetStore, synthesize
from model_zoo.evaluate import evaluate_onnx


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _scaled(lo: float, hi: float):
    def cb(ev: dict[str, Any]) -> None:
        if "progress" in ev:
            ev = {**ev, "progress": round(lo + (hi - lo) * float(ev["progress"]), 4)}
        emit(ev)

    return cb


def run_train(job_dir: Path, p: dict[str, Any]) -> dict[str, Any]:

    store = DatasetStore(Path(p["datasets_dir"]))
    dv = store.load(p["dataset"], p.get("dataset_version"))
    run_dir = job_dir / "run"
    nproc = int(p.get("nproc", 1))
    train_args = [
        "--data",
        str(store.root),
        "--dataset",
        dv.ref,
        "--model",
        p["model"],
        "--epochs",
        str(p["epochs"]),
        "--batch",
        str(p["batch"]),
        "--lr",
        str(p["lr"]),
        "--out",
        str(run_dir),
        "--progress",
        "json",
        "--seed",
        str(p.get("seed", 0)),
    ]
    if p.get("size"):
        train_args += ["--size", str(p["size"])]
    if p.get("init_from"):
        train_args += ["--from", p["init_from"]]
    if p.get("max_minutes"):
        train_args += ["--max-minutes", str(p["max_minutes"])]
    if p.get("hard_share"):
        train_args += ["--hard-share", str(p["hard_share"])]
    if (run_dir / "last.pt").is_file():
        train_args.append("--resume")  # a job re-run after a server restart continues where it stopped
        emit({"event": "step", "message": "resuming from the last checkpoint"})
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += ["-m", "model_zoo.train", *train_args]
    else:
        cmd = [sys.executable, "-m", "model_zoo.train", *train_args]
    emit({"event": "step", "message": f"training {p['model']} on {dv.ref} for {p['epochs']} epochs", "progress": 0.0})
    scale = _scaled(0.0, 0.8)
    workers = int(p.get("workers", 1))
    if workers > 1:
        if not os.environ.get("EDGELOOP_RAY_ADDRESS"):
            raise UserError(
                "--workers N trains on a Ray cluster: start the server with --jobs ray://HOST:PORT "
                "(or use --nproc N for DDP on this host)"
            )
        from model_zoo.training.ray_train import train_on_ray

        # Ray Train's workers print to this job's log themselves (rank 0 reports); nothing to relay here
        train_on_ray(train_args, workers, float(p.get("gpus_per_worker", 0)), job_dir / "ray")
        summary = json.loads((run_dir / "summary.json").read_text())
        return _compile_trained(job_dir, p, dv, run_dir, summary)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        try:
            scale(json.loads(line))
        except json.JSONDecodeError:
            continue
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise UserError(_last_line(err) or f"training exited with {proc.returncode}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return _compile_trained(job_dir, p, dv, run_dir, summary)


def _compile_trained(
    job_dir: Path, p: dict[str, Any], dv: Any, run_dir: Path, summary: dict[str, Any]
) -> dict[str, Any]:
    report = compile_checkpoint(
        run_dir / "best.pt",
        dv,
        job_dir / "compiled",
        tuple(p.get("targets") or ()) or _default_targets(),
        calibration=p.get("calibration", "minmax"),
        trt_int8=p.get("trt_int8", "explicit"),
        progress=_scaled(0.8, 1.0),
    )
    return {
        "checkpoint": str(run_dir / "best.pt"),
        "compiled": str(job_dir / "compiled"),
        "report": report.to_json(),
        "training": summary,
    }


def evaluation_gate(
    candidate_onnx: Path, current_onnx: Path, p: dict[str, Any], report: dict[str, Any]
) -> dict[str, Any]:
    """Candidate vs current on the fixed holdout (the val split of the dataset the current version was trained
    on) and on the newly labelled hard samples that fell in the val split; rejected past the budget."""

    store = DatasetStore(Path(p["datasets_dir"]))
    holdout = store.load(*parse_ref(p["holdout_dataset"]))
    new = store.load(p["dataset"], p.get("dataset_version"))
    spec = InputSpec.model_validate(report["input_spec"])
    task, metric, budget = report["task"], report["metric"], float(p.get("budget_points", 1.0))
    out: dict[str, Any] = {"metric": metric, "budget_points": budget, "holdout_dataset": holdout.ref}
    emit({"event": "step", "message": f"gate: scoring candidate and current on the {holdout.ref} holdout"})
    cur = evaluate_onnx(current_onnx, holdout, task, spec)[metric]
    cand = evaluate_onnx(candidate_onnx, holdout, task, spec)[metric]
    out["holdout"] = {"current": cur, "candidate": cand, "delta_points": round((cand - cur) * 100, 2)}
    hard = [x for x in new.split("val") if x.source.startswith("sample:")]
    out["hard_samples"] = {"n": len(hard)}
    if len(hard) >= 3:
        sliced = replace(new, samples=tuple(hard))
        hc = evaluate_onnx(current_onnx, sliced, task, spec)[metric]
        hn = evaluate_onnx(candidate_onnx, sliced, task, spec)[metric]
        out["hard_samples"].update(current=hc, candidate=hn, delta_points=round((hn - hc) * 100, 2))
    regress = out["holdout"]["delta_points"] < -budget
    out["passed"] = not regress
    out["reason"] = (
        f"holdout {metric} {out['holdout']['delta_points']:+.2f} pts is past the budget of -{budget}"
        if regress
        else f"holdout {metric} {out['holdout']['delta_points']:+.2f} pts (budget -{budget})"
    )
    return out


def run_retrain(job_dir: Path, p: dict[str, Any]) -> dict[str, Any]:
    result = run_train(job_dir, p)
    fp32 = next(r for r in result["report"]["results"] if r["target"] == "onnx-fp32")
    result["gate"] = evaluation_gate(Path(fp32["path"]), Path(p["current_onnx"]), p, result["report"])
    emit({"event": "step", "message": "gate: " + result["gate"]["reason"], "progress": 1.0})
    return result


def run_compile(job_dir: Path, p: dict[str, Any]) -> dict[str, Any]:

    dv = DatasetStore(Path(p["datasets_dir"])).load(p["dataset"], p.get("dataset_version"))
    report = compile_checkpoint(
        Path(p["checkpoint"]),
        dv,
        job_dir / "compiled",
        tuple(p.get("targets") or ()) or _default_targets(),
        calibration=p.get("calibration", "minmax"),
        trt_int8=p.get("trt_int8", "explicit"),
        progress=_scaled(0.0, 1.0),
    )
    return {"checkpoint": p["checkpoint"], "compiled": str(job_dir / "compiled"), "report": report.to_json()}


def run_synthesize(job_dir: Path, p: dict[str, Any]) -> dict[str, Any]:

    store = DatasetStore(Path(p["datasets_dir"]))
    parent = store.load(p["name"]) if p.get("extend") and store.versions(p["name"]) else None
    emit({"event": "step", "message": f"rendering {p['count']} {p['preset']} scenes", "progress": 0.0})
    dv = synthesize(
        store,
        p["name"],
        p["preset"],
        int(p["count"]),
        seed=int(p.get("seed", 0)),
        size=(int(p.get("width", 256)), int(p.get("height", 256))),
        val_fraction=float(p.get("val_fraction", 0.2)),
        parent=parent,
    )
    return {"dataset": dv.summary()}


def _default_targets() -> tuple[str, ...]:

    return DEFAULT_TARGETS


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:400] if lines else ""


class UserError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = Path(argv[0])
    p = json.loads((job_dir / "params.json").read_text())
    runners = {"train": run_train, "compile": run_compile, "synthesize": run_synthesize, "retrain": run_retrain}
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        result = runners[p["kind"]](job_dir, p)
    except UserError as exc:
        emit({"event": "error", "message": str(exc)})
        return 2
    except (ValueError, FileNotFoundError) as exc:  # DatasetError, CompileError and bad parameters
        emit({"event": "error", "message": str(exc).splitlines()[0][:400]})
        return 2
    tmp = job_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, job_dir / "result.json")
    emit({"event": "done", "progress": 1.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
