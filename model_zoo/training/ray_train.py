"""Training across a Ray cluster: Ray Train's TorchTrainer runs `model_zoo.train` on N workers, DDP with gloo
on CPU and nccl on GPU, one GPU per worker when asked, spread over whichever nodes Ray places them on.

Placement is checked before anything starts: more workers than the cluster has CPUs (or GPUs) is a clear
error at once, and a placement that does not happen within `placement_timeout_s` (the resources exist but
are busy) is an error too, never a hang. Only rank 0 reports progress; every worker says where it landed.
UNVERIFIED on a GPU cluster (the nccl path); tested here on two CPU nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class PlacementError(ValueError):
    """The cluster cannot place the workers; str() says what was asked and what it has."""


def _loop(config: dict[str, Any]) -> None:
    import ray
    import ray.train

    from model_zoo.train import main

    ctx = ray.train.get_context()
    node = ray.get_runtime_context().get_node_id()
    print(json.dumps({"event": "ray_worker", "rank": ctx.get_world_rank(), "world": ctx.get_world_size(),
                      "node": node}), flush=True)  # fmt: skip
    rc = main(list(config["argv"]))
    if rc != 0:
        raise RuntimeError(f"training exited with {rc} on rank {ctx.get_world_rank()}")


def train_on_ray(
    argv: list[str], workers: int, gpus_per_worker: float, storage: Path, placement_timeout_s: float = 60.0
) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.placement_group import placement_group, remove_placement_group

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=True)
    have = ray.cluster_resources()
    need_cpu, need_gpu = float(workers), workers * gpus_per_worker
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        raise PlacementError(
            f"--workers {workers} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs; the Ray cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs"
        )
    bundle = {"CPU": 1.0, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    pg = placement_group([bundle] * workers, strategy="SPREAD")
    try:
        if not pg.wait(placement_timeout_s):
            raise PlacementError(
                f"Ray could not place {workers} workers of {bundle} within {placement_timeout_s:g} s "
                "(the cluster has the resources, but they are taken)"
            )
    finally:
        remove_placement_group(pg)  # a probe: the trainer reserves its own
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"argv": argv},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpus_per_worker > 0,
            resources_per_worker=bundle,
            placement_strategy="SPREAD",
        ),
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        run_config=RunConfig(storage_path=str(storage), name="train"),
    )
    trainer.fit()
