"""A worker's place in the torch.distributed world: joining the process
group (gloo on a CPU, NCCL on GPUs), the device and threads a rank uses, and
leaving it again. Collectives themselves are the models' business
(models/layers/tensor_parallel.py); this is only the setup around them."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from jevons.models.layers.tensor_parallel import TensorParallel


@dataclass(frozen=True)
class WorkerPlace:
    """Where one worker sits: its rank among world_size, and how it meets the others."""

    rank: int
    world_size: int
    init_method: str  # "tcp://host:port" of rank 0's store
    timeout_s: float  # a collective that waits longer fails instead of hanging
    # Which GPU of the ones this process sees ("cuda" -> "cuda:<index>"): the
    # rank under mp; 0 under Ray, which shows each actor its own GPU alone.
    device_index: int = 0


def free_port() -> int:
    """A TCP port free on this machine now (for the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rank_device(device: str, index: int) -> str:
    """One GPU per rank ("cuda" -> "cuda:<index>"); CPU ranks share the CPU."""
    if device.startswith("cuda") and ":" not in device:
        return f"cuda:{index}"
    return device


def rank_threads(processes: int) -> int:
    """CPU ranks (of every replica) split the cores between them (an OpenMP
    pool per process that each grab every core would fight over them);
    OMP_NUM_THREADS wins."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // processes)


def join_group(place: WorkerPlace, device: str) -> TensorParallel:
    """Join the group of all ranks; returns this rank's TensorParallel."""
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(rank_device(device, place.device_index)))
    elif place.init_method.startswith("tcp://127.0.0.1:"):
        # One machine: talk over loopback, whatever the hostname resolves to.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=place.init_method, rank=place.rank,
                            world_size=place.world_size, timeout=timedelta(seconds=place.timeout_s))
    return TensorParallel(rank=place.rank, size=place.world_size, group=dist.group.WORLD)


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
