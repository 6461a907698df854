"""`edgeloop datasets|train|compile|jobs`: the model zoo, driven through the server's job queue."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet_server.cli.client import AdminClient, CliError, parse_ref_latest
from fleet_server.cli.common import admin_client, fetch_tar, out
from fleet_server.jobs.states import FINISHED, JobState


def _dataset_line(d: dict[str, Any]) -> str:
    return (
        f"{d['name'] + ':' + str(d['version']):<24} {d['task']:<8} {d['samples']:>7} samples "
        f"({d['train']} train / {d['val']} val)  classes: {', '.join(d['classes'])}"
    )


def _dataset_text(d: dict[str, Any]) -> str:
    lines = [_dataset_line(d), f"id {d['id']}  created {d['created_at']}  {d.get('note') or ''}"]
    if d.get("parent"):
        lines.append(f"parent {d['parent']}")
    lines.append(f"{'class':<16} {'train':>7} {'val':>7}")
    for c in d["classes"]:
        lines.append(f"{c:<16} {d['objects']['train'][c]:>7} {d['objects']['val'][c]:>7}")
    return "\n".join(lines)


def _job_line(j: dict[str, Any]) -> str:
    return f"job {j['id']:<5} {j['kind']:<10} {j['state']:<10} {j['progress'] * 100:5.1f}%  {j['message']}"


def event_line(ev: dict[str, Any]) -> str | None:
    """One job event as a line for people: epochs with their metrics, steps, errors; None for the rest."""
    kind = ev.get("event")
    if kind == "epoch":
        metrics = "  ".join(
            f"{k.replace('_', '-')} {ev[k]:.3f}" for k in ("mAP50", "mAP50_95", "top1") if isinstance(ev.get(k), float)
        )
        return f"epoch {ev['epoch']}/{ev['epochs']}  loss {ev['loss']:.4f}  {metrics}  ({ev.get('seconds', 0):.0f} s)"
    if kind in ("step", "error") and ev.get("message"):
        return ("error: " if kind == "error" else "") + str(ev["message"])
    return None


def _after(log_: list[dict[str, Any]], last: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The events after `last` in a log tail (the tail is a sliding window, so an index would drift)."""
    if last is None:
        return log_
    for i in range(len(log_) - 1, -1, -1):
        if log_[i] == last:
            return log_[i + 1 :]
    return log_


def wait_job(
    client: AdminClient, job_id: int, quiet: bool = False, poll: float = 1.0, raw: bool = False
) -> dict[str, Any]:
    """Follow a job until it ends. On a terminal: one progress bar line (epoch, step, ETA, last metric). Else
    one line per epoch and step, and where a long epoch is at most every 15 s; `raw`: the worker's JSON events."""
    last_ev: dict[str, Any] | None = None
    last_step, last_msg = 0.0, ""
    tty = sys.stderr.isatty() and not raw
    while True:
        j = client.request("GET", f"/api/v1/jobs/{job_id}", params={"tail": 1000})
        log_ = j.get("log", [])
        if not quiet:
            if tty:
                bar = "#" * int(j["progress"] * 30)
                print(f"\r[{bar:<30}] {j['progress'] * 100:5.1f}% {j['message'][:90]:<90}", end="", file=sys.stderr)
            else:
                for ev in _after(log_, last_ev):
                    if raw:
                        if ev.get("event") in ("epoch", "step", "error"):
                            print(json.dumps(ev), file=sys.stderr)
                        continue
                    line = event_line(ev)
                    if line:
                        print(f"  {line}", file=sys.stderr, flush=True)
                # inside a long epoch: where it is (step, ETA), at most every 15 s
                tick = j["state"] == "running" and " · ETA " in j["message"] and j["message"] != last_msg
                if tick and time.monotonic() - last_step >= 15:
                    last_step, last_msg = time.monotonic(), j["message"]
                    print(f"  {j['message']}", file=sys.stderr, flush=True)
        last_ev = log_[-1] if log_ else last_ev
        if j["state"] in FINISHED:
            if tty and not quiet:
                print(file=sys.stderr)
            return j
        time.sleep(poll)


def _finish(args: argparse.Namespace, client: AdminClient, job: dict[str, Any], done: Callable[[dict], str]) -> int:
    if not args.wait:
        out(args, job, _job_line(job) + f"\nfollow it: edgeloop jobs watch {job['id']}")
        return 0
    j = wait_job(client, job["id"], raw=getattr(args, "json", False))
    if j["state"] != "succeeded":
        out(args, j, _job_line(j) + (f"\n{j['error']}" if j.get("error") else ""))
        return 1
    out(args, j, done(j))
    return 0


# -- datasets --------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    client = admin_client(args)
    body = {
        "preset": args.preset,
        "count": args.count,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "extend": args.extend,
    }
    job = client.request("POST", f"/api/v1/datasets/{args.name}/synthesize", json=body)
    return _finish(args, client, job, lambda j: f"created {j['result']['dataset']}\n" + _dataset_text(j["result"]))


def cmd_import(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    if path.is_dir():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            tf.add(path, arcname=path.name)
        body = buf.getvalue()
    else:
        body = path.read_bytes()
    d = admin_client(args).request(
        "POST",
        f"/api/v1/datasets/{args.name}/import",
        params={"format": args.format, "val_fraction": args.val_fraction},
        content=body,
        headers={"content-type": "application/octet-stream"},
    )
    out(args, d, f"created {d['name']}:{d['version']}\n" + _dataset_text(d))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", "/api/v1/datasets")
    out(args, rows, "\n".join(_dataset_line(d) for d in rows) or "no datasets")
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    name, ver = parse_ref_latest(args.ref)
    c = admin_client(args)
    if ver:
        d = c.request("GET", f"/api/v1/datasets/{name}/versions/{ver}")
    else:
        d = c.request("GET", f"/api/v1/datasets/{name}/versions")[-1]
    out(args, d, _dataset_text(d))
    return 0


def cmd_datasets_export(args: argparse.Namespace) -> int:
    name, ver = parse_ref_latest(args.ref)
    c = admin_client(args)
    if not ver:
        ver = int(c.request("GET", f"/api/v1/datasets/{name}/versions")[-1]["version"])
    params = {"format": args.format, **({"split": args.split} if args.split else {})}
    fetch_tar(c, f"/api/v1/datasets/{name}/versions/{ver}/export", params, args.out)
    print(f"exported {name}:{ver} as {args.format} into {args.out}")
    return 0


# -- train / compile / jobs ------------------------------------------------------------------------
def _version_done(j: dict[str, Any]) -> str:
    r = j["result"]
    lines = [f"registered {r['model']}"]
    if r.get("training"):
        t = r["training"]
        best = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in dict(t["best"]).items())
        lines.append(f"trained {t['epochs_run']} epochs in {t['seconds']} s; best {best}")
    lines.append("recommended: " + ", ".join(f"{k}={v}" for k, v in r["recommended"].items()))
    lines.append(f"the target table: edgeloop models show {r['model']}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    client = admin_client(args)
    body = {
        "dataset": args.dataset,
        "model": args.model,
        "name": args.name,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "size": args.size,
        "from_ref": args.init_from,
        "targets": args.targets.split(",") if args.targets else None,
        "calibration": args.calibration,
        "trt_int8": args.trt_int8,
        "nproc": args.nproc,
        "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "max_minutes": args.max_minutes,
    }
    job = client.request("POST", "/api/v1/jobs/train", json=body)
    return _finish(args, client, job, _version_done)


def cmd_compile(args: argparse.Namespace) -> int:
    client = admin_client(args)
    body = {
        "ref": args.ref,
        "targets": args.targets.split(",") if args.targets else None,
        "calibration": args.calibration,
        "trt_int8": args.trt_int8,
        "dataset": args.dataset,
    }
    job = client.request("POST", "/api/v1/jobs/compile", json=body)
    return _finish(args, client, job, _version_done)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    rows = admin_client(args).request("GET", "/api/v1/jobs", params={"state": args.state} if args.state else {})
    out(args, rows, "\n".join(_job_line(j) for j in rows) or "no jobs")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    j = admin_client(args).request("GET", f"/api/v1/jobs/{args.id}", params={"tail": args.tail})
    lines = [_job_line(j), f"params: {json.dumps(j['params'])}", f"created {j['created_at']} by {j['created_by']}"]
    if j.get("error"):
        lines.append(f"error: {j['error']}")
    if j.get("result"):
        lines.append(f"result: {json.dumps(j['result'])}")
    lines += [json.dumps(ev) for ev in j.get("log", [])]
    out(args, j, "\n".join(lines))
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    j = wait_job(admin_client(args), args.id)
    out(args, j, _job_line(j) + (f"\n{j['error']}" if j.get("error") else ""))
    return 0 if j["state"] == "succeeded" else 1


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    j = admin_client(args).request("POST", f"/api/v1/jobs/{args.id}/cancel")
    out(args, j, _job_line(j))
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    j = admin_client(args).request("POST", f"/api/v1/jobs/{args.id}/retry")
    out(args, j, _job_line(j))
    return 0


def add_parsers(sub: Any, admin_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    ds = sub.add_parser("datasets", help="dataset versions").add_subparsers(dest="sub", required=True)
    p = ds.add_parser("synth", help="a dataset of synthetic scenes with exact boxes (a server job)")
    p.add_argument("name")
    p.add_argument("--preset", default="easy", help="easy | medium | hard | night")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--extend", action="store_true", help="add to the latest version of NAME")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    admin_flags(p)
    p.set_defaults(func=cmd_synth)
    p = ds.add_parser("import", help="import a COCO or YOLO folder (or a tar of one) as a new version")
    p.add_argument("name")
    p.add_argument("path", type=Path)
    p.add_argument("--format", required=True, choices=["coco", "yolo"])
    p.add_argument("--val-fraction", type=float, default=0.2)
    admin_flags(p)
    p.set_defaults(func=cmd_import)
    p = ds.add_parser("list", help="datasets (latest version of each)")
    admin_flags(p)
    p.set_defaults(func=cmd_datasets_list)
    p = ds.add_parser("show", help="one dataset version with counts per class")
    p.add_argument("ref", help="NAME or NAME:VERSION")
    admin_flags(p)
    p.set_defaults(func=cmd_datasets_show)
    p = ds.add_parser("export", help="export a version as a COCO or YOLO folder")
    p.add_argument("ref", help="NAME or NAME:VERSION")
    p.add_argument("--format", default="coco", choices=["coco", "yolo"])
    p.add_argument("--split", choices=["train", "val"])
    p.add_argument("--out", type=Path, required=True)
    admin_flags(p)
    p.set_defaults(func=cmd_datasets_export)

    t = sub.add_parser("train", help="train, compile every target, register a version (a server job)")
    t.add_argument("--dataset", required=True, help="NAME or NAME:VERSION")
    t.add_argument("--model", default="eldet", help="eldet | mobilenet_v3_small | resnet18")
    t.add_argument("--name", required=True, help="model name to register the result under")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--size", type=int, help="input size (default: the architecture's)")
    t.add_argument("--from", dest="init_from", metavar="NAME:VERSION", help="fine-tune from this version")
    t.add_argument("--targets", help="comma-separated compile targets (default: all)")
    t.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    t.add_argument(
        "--trt-int8",
        default="explicit",
        choices=["explicit", "cache"],
        help="how the tensorrt target carries INT8: explicit Q/DQ nodes (TensorRT 10; default) or a calibration "
        "cache (older TensorRT)",
    )
    t.add_argument("--nproc", type=int, default=1, help="DDP processes (torchrun)")
    t.add_argument(
        "--workers", type=int, default=1, help="Ray Train workers, on whichever nodes Ray places them (--jobs ray://)"
    )
    t.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray Train worker takes (default 0)")
    t.add_argument("--max-minutes", type=float, help="stop training after the epoch that passes this")
    t.add_argument("--wait", action="store_true", help="follow the job until it ends")
    admin_flags(t)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compile", help="recompile a version's checkpoint into a new version (a server job)")
    c.add_argument("ref", help="NAME:VERSION")
    c.add_argument("--targets", help="comma-separated targets: onnx-fp32,onnx-int8,onnx-fp16,tensorrt")
    c.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    c.add_argument(
        "--trt-int8",
        default="explicit",
        choices=["explicit", "cache"],
        help="how the tensorrt target carries INT8: explicit Q/DQ nodes (TensorRT 10; default) or a calibration "
        "cache (older TensorRT)",
    )
    c.add_argument("--dataset", help="calibration / evaluation dataset (default: the training dataset)")
    c.add_argument("--wait", action="store_true")
    admin_flags(c)
    c.set_defaults(func=cmd_compile)

    j = sub.add_parser("jobs", help="training / compile / synthesis jobs").add_subparsers(dest="sub", required=True)
    p = j.add_parser("list")
    p.add_argument("--state", choices=[s.value for s in JobState])
    admin_flags(p)
    p.set_defaults(func=cmd_jobs_list)
    p = j.add_parser("show")
    p.add_argument("id", type=int)
    p.add_argument("--tail", type=int, default=20, help="log lines to show")
    admin_flags(p)
    p.set_defaults(func=cmd_jobs_show)
    p = j.add_parser("watch", help="follow a job until it ends")
    p.add_argument("id", type=int)
    admin_flags(p)
    p.set_defaults(func=cmd_jobs_watch)
    p = j.add_parser("cancel")
    p.add_argument("id", type=int)
    admin_flags(p)
    p.set_defaults(func=cmd_jobs_cancel)
    p = j.add_parser("retry", help="run a failed or cancelled job again; training resumes from its last checkpoint")
    p.add_argument("id", type=int)
    admin_flags(p)
    p.set_defaults(func=cmd_jobs_retry)
