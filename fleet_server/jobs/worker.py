"""One job, in its own process: `python -m fleet_server.jobs.worker JOB_DIR [--root DATA_DIR]` on the server's
disk, or `python -m fleet_server.jobs.worker --job ID --storage-url URL` on a host that has only the bucket.

Reads JOB_DIR/params.json, prints one JSON object per line (progress events the runner stores), writes
JOB_DIR/result.json on success and exits 0; on a user error it prints {"event": "error", "message": …}
and exits 2. It never touches the database: the runner, in the server, registers what it produced. The
paths in params and result are relative to the data root, the same layout on every host and in the bucket
(see model_zoo/objects.py): with a bucket, inputs are fetched from it, and checkpoints (each epoch),
compiled files and the result go back to it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
from model_zoo.objects import JobFiles, cache_root


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _scaled(lo: float, hi: float):
    def cb(ev: dict[str, Any]) -> None:
        if "progress" in ev:
            ev = {**ev, "progress": round(lo + (hi - lo) * float(ev["progress"]), 4)}
        emit(ev)

    return cb


def _dataset(files: JobFiles, p: dict[str, Any], ref: tuple[str, int | None] | None = None) -> Any:
    """The job's dataset version with every image on this host (fetched from the bucket), before any work."""
    store = DatasetStore(files.path(p["datasets_dir"]), files.remote)
    dv = store.load(*(ref or (p["dataset"], p.get("dataset_version"))))
    if n := store.materialize(dv):
        emit({"event": "step", "message": f"fetched {n} images of {dv.ref} from object storage"})
    return dv


def run_train(job_dir: Path, p: dict[str, Any], files: JobFiles) -> dict[str, Any]:

    dv = _dataset(files, p)
    run_dir = job_dir / "run"
    nproc = int(p.get("nproc", 1))
    # with a bucket, paths go relative to the data root: a Ray worker on another node resolves them under its
    # own cache, fetching what it lacks (the dataset, the checkpoint to fine-tune from or resume)
    portable = files.remote is not None
    where = (lambda x: files.rel(files.path(x))) if portable else (lambda x: str(files.path(x)))
    train_args = [
        "--data", where(p["datasets_dir"]), "--dataset", dv.ref, "--model", p["model"],
        "--epochs", str(p["epochs"]), "--batch", str(p["batch"]), "--lr", str(p["lr"]),
        "--out", where(files.rel(run_dir)), "--progress", "json", "--seed", str(p.get("seed", 0)),
    ]  # fmt: skip
    if p.get("size"):
        train_args += ["--size", str(p["size"])]
    if p.get("init_from"):
        src = files.fetch(p["init_from"], "checkpoint to fine-tune from")  # here, and named at once if it is gone
        train_args += ["--from", files.rel(src) if portable else str(src)]
    if p.get("max_minutes"):
        train_args += ["--max-minutes", str(p["max_minutes"])]
    if p.get("hard_share"):
        train_args += ["--hard-share", str(p["hard_share"])]
    if portable:
        sync = files.rel(run_dir)
        train_args += ["--storage-url", p["storage_url"], "--sync-prefix", sync]
        files.fetch_optional(f"{sync}/last.pt")  # where another host left off
    if (run_dir / "last.pt").is_file():
        train_args.append("--resume")  # a job re-run after a server restart continues where it stopped
        emit({"event": "step", "message": "resuming from the last checkpoint"})
    here = [*train_args, "--root", str(files.root)] if portable else train_args
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += ["-m", "model_zoo.train", *here]
    else:
        cmd = [sys.executable, "-m", "model_zoo.train", *here]
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
        summary = json.loads(files.fetch(files.rel(run_dir / "summary.json"), "training summary").read_text())
        files.fetch(files.rel(run_dir / "best.pt"), "best checkpoint")  # rank 0 may have run on another node
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
        raise UserError(_died(proc.returncode, err))
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
        latency_seconds=float(p.get("measure_s", 1.5)),
        progress=_scaled(0.8, 1.0),
    )
    return {
        "checkpoint": str(run_dir / "best.pt"),
        "compiled": str(job_dir / "compiled"),
        "report": report.to_json(),
        "training": summary,
    }


def evaluation_gate(
    candidate_onnx: Path,
    current_onnx: Path,
    p: dict[str, Any],
    report: dict[str, Any],
    files: JobFiles | None = None,
) -> dict[str, Any]:
    """Candidate vs current on the fixed holdout (the val split of the dataset the current version was trained
    on) and on the newly labelled hard samples that fell in the val split; rejected past the budget. Paths in
    `p` are under `files`' root (the working directory when none is given)."""
    files = files or JobFiles(Path.cwd())

    holdout = _dataset(files, p, parse_ref(p["holdout_dataset"]))
    new = _dataset(files, p)
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


def run_retrain(job_dir: Path, p: dict[str, Any], files: JobFiles) -> dict[str, Any]:
    current = files.fetch(p["current_onnx"], "current version's ONNX")
    result = run_train(job_dir, p, files)
    fp32 = next(r for r in result["report"]["results"] if r["target"] == "onnx-fp32")
    result["gate"] = evaluation_gate(Path(fp32["path"]), current, p, result["report"], files)
    emit({"event": "step", "message": "gate: " + result["gate"]["reason"], "progress": 1.0})
    return result


def run_compile(job_dir: Path, p: dict[str, Any], files: JobFiles) -> dict[str, Any]:

    dv = _dataset(files, p)
    checkpoint = files.fetch(p["checkpoint"], "checkpoint")
    report = compile_checkpoint(
        checkpoint,
        dv,
        job_dir / "compiled",
        tuple(p.get("targets") or ()) or _default_targets(),
        calibration=p.get("calibration", "minmax"),
        trt_int8=p.get("trt_int8", "explicit"),
        latency_seconds=float(p.get("measure_s", 1.5)),
        progress=_scaled(0.0, 1.0),
    )
    return {"checkpoint": str(checkpoint), "compiled": str(job_dir / "compiled"), "report": report.to_json()}


def run_synthesize(job_dir: Path, p: dict[str, Any], files: JobFiles) -> dict[str, Any]:

    store = DatasetStore(files.path(p["datasets_dir"]), files.remote)
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


def _died(rc: int, stderr: str) -> str:
    """Why training stopped, first line first (the job's message), then the tail of what it printed."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        head = f"training was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        head = _last_line(stderr) or f"training exited with {rc}"
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-10:]
    return "\n".join([head, *(["last lines it printed:", *tail] if tail else [])])[:1800]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:400] if lines else ""


class UserError(Exception):
    pass


def _portable(result: dict[str, Any], files: JobFiles) -> dict[str, Any]:
    """The result with its paths relative to the data root, and what they name uploaded to the bucket."""
    out = dict(result)
    for key in ("checkpoint", "compiled"):
        if out.get(key) and Path(out[key]).is_absolute():
            out[key] = files.rel(Path(out[key]))
    if str(out.get("checkpoint", "")).startswith("jobs/"):  # one this job made (an input is there already)
        files.put(files.path(out["checkpoint"]))
    if out.get("compiled"):
        files.put_tree(files.path(out["compiled"]))
    report = out.get("report")
    if isinstance(report, dict):
        rows = [{**r, "path": files.rel(Path(r["path"]))} if r.get("path") else r for r in report.get("results", [])]
        out["report"] = {**report, "results": rows}
    return out


def _args(argv: list[str]) -> tuple[Path, JobFiles, dict[str, Any]]:
    """(job folder, files, params) from `JOB_DIR [--root DATA_DIR]` or `--job ID --storage-url URL`."""
    ap = argparse.ArgumentParser(prog="python -m fleet_server.jobs.worker")
    ap.add_argument("job_dir", nargs="?", type=Path)
    ap.add_argument("--root", type=Path, default=None, help="the data root the job's relative paths are under")
    ap.add_argument("--job", type=int, default=None, help="with --storage-url: read the job from the bucket")
    ap.add_argument("--storage-url", default=None)
    a = ap.parse_args(argv)
    if a.job is not None:
        if not a.storage_url:
            ap.error("--job needs --storage-url")
        root = a.root or cache_root()
        files = JobFiles.open(root, a.storage_url)
        job_dir = files.path(f"jobs/{a.job}")
        params = json.loads(files.fetch(f"jobs/{a.job}/params.json", "job parameters").read_text())
        # a result left by an earlier attempt on this host is not this attempt's
        (job_dir / "result.json").unlink(missing_ok=True)
        return job_dir, files, params
    if a.job_dir is None:
        ap.error("give JOB_DIR or --job ID")
    params = json.loads((a.job_dir / "params.json").read_text())
    root = a.root or a.job_dir.parent.parent  # DATA_DIR/jobs/ID
    return a.job_dir, JobFiles.open(root, params.get("storage_url")), params


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    job_dir, files, p = _args(sys.argv[1:] if argv is None else argv)
    runners = {"train": run_train, "compile": run_compile, "synthesize": run_synthesize, "retrain": run_retrain}
    try:
        result = _portable(runners[p["kind"]](job_dir, p, files), files)
    except UserError as exc:
        emit({"event": "error", "message": str(exc)})
        return 2
    except (ValueError, FileNotFoundError) as exc:  # DatasetError, CompileError and bad parameters
        emit({"event": "error", "message": str(exc).splitlines()[0][:400]})
        return 2
    tmp = job_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, job_dir / "result.json")
    files.put(job_dir / "result.json")  # last: the server reads it as the sign that everything is uploaded
    emit({"event": "done", "progress": 1.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
