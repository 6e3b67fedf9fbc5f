"""Several processes, one recipe: the process group torchrun describes in the environment, and the few collectives the stages need.

Without torchrun's variables every helper degrades to the single-process case, so stages call them unconditionally.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import BadInput
from .compute import cuda_problem


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def uses_cuda(device: str) -> bool:
    """Whether ranks run on CUDA (and so join with NCCL): one rule for init_world and the pre-flight."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def launch_problem(device: str) -> str | None:
    """Why torchrun's ranks on this machine could not join their NCCL group, with the fix; None when they can (or
    when there is no torchrun, or the ranks join with gloo on CPU). Found before any stage instead of as a CUDA
    traceback from every rank."""
    size, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if size <= 1 or not uses_cuda(device):
        return None
    if not dist.is_nccl_available():
        return (
            f"torchrun: ranks on CUDA join with the nccl backend, which torch {torch.__version__} lacks. "
            "Hint: install a CUDA build of torch, or set compute.device: cpu (gloo)"
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < local:
        hint = f"torchrun --nproc-per-node {gpus}, or set compute.device: cpu (gloo)" if gpus else "set compute.device: cpu (gloo), or auto"
        return f"torchrun: {local} ranks on this machine but {gpus} CUDA GPU(s); the nccl backend needs a GPU per rank. Hint: {hint}"
    return None


def init_world(device: str = "auto", timeout_s: float = 1800) -> World:
    """Joins torchrun's process group (NCCL on CUDA, gloo on CPU) once per process; a plain launch is a world of one."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = uses_cuda(device)
    if use_cuda and (problem := cuda_problem(device)):
        raise BadInput(problem)  # a Python API caller without the pre-flight still gets one line, not a CUDA traceback
    if use_cuda:
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        backend, device_id = ("nccl", dev) if use_cuda else ("gloo", None)
        rank = int(os.environ.get("RANK", "0"))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts; without a prefix per attempt, a restarted rank can
            # read the dead group's addresses and fail to connect
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, is_master=False, timeout=timeout)
            store = dist.PrefixStore(f"edgedistill/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout, device_id=device_id)
        else:
            dist.init_process_group(backend, timeout=timeout, device_id=device_id)
    _WORLD = World(int(os.environ.get("RANK", "0")), size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), dev)
    return _WORLD


def world() -> World:
    return _WORLD


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (pickled by torch between our own processes only)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Averages gradients of parameters that live outside the DDP-wrapped student (the feature adapter)."""
    if not dist.is_initialized():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def close_world() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
