"""FSDP for full-parameter baselines on several GPUs: one process per device, launched by torchrun.

    torchrun --nproc-per-node 4 -m onelayer.cli train --layers all --fsdp ...

Each rank holds a shard of every decoder block (FSDP2 ``fully_shard``, per block,
then the root), samples its share of the step's task groups with the full
weights gathered (``unshard``), and the update reduce-scatters gradients summed
over ranks, with the loss normalised by batch-wide denominators, so one step
equals the single-process step on the whole batch. Only rank 0 writes the run
directory; it gathers full tensors for the checkpoints and evaluates alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from onelayer.errors import UserError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:LOCAL_RANK" or "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and evaluates."""
        return self.rank == 0

    def local_groups(self, num_tasks: int) -> range:
        """The task groups this rank samples and trains on (a contiguous share; groups never straddle ranks)."""
        share = num_tasks // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)


def init_distributed(device: str, num_tasks: int) -> Dist:
    """Join the torchrun job (nccl on CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU) or say what is wrong."""
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise UserError(f"--fsdp runs one process per device under torchrun ({', '.join(missing)} not set): launch with "
                        "`torchrun --nproc-per-node N -m onelayer.cli train --fsdp ...`")
    rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if num_tasks % world:
        raise UserError(f"--fsdp splits the step's num_tasks={num_tasks} task groups across {world} processes: make "
                        f"num_tasks a multiple of {world}")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise UserError(f"--device {device} with --fsdp needs CUDA, which this machine lacks: use --device cpu")
    dev = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # Rank 0 evaluates alone while the others wait: a long evaluation must not time the job out.
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(dev) if cuda else None,
                                timeout=timedelta(hours=2))
    return Dist(rank, world, local, dev)


def shard_model(model, blocks) -> None:
    """FSDP2: each decoder block is its own unit (gathered for its forward/backward), then the rest at the root.

    FSDP averages gradients over ranks; the trainer scales each rank's loss (its share
    of the batch-wide mean, with all-reduced denominators) by the world size, so the
    average is the whole batch's gradient. (Summing via ``set_gradient_divide_factor(1)``
    needs PREMUL_SUM, which gloo lacks.)
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def fsdp_modules(model) -> list:
    """Every FSDP unit of ``model`` (the blocks and the root)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_weights(model):
    """Every rank holds the full weights inside (a collective on entry and exit), so forwards need no communication.

    Sampling runs a different number of forwards on each rank (responses end at
    different lengths); with the shards gathered up front, no forward waits for another rank.
    """
    units = fsdp_modules(model)
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


@contextlib.contextmanager
def root_weights(model):
    """The root unit's tensors (embeddings, final norm, head; frozen under --fsdp) gathered inside, the blocks still sharded."""
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) a few floats over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank."""
    dist.barrier()


def full_tensors(model, names: list[str]) -> dict[str, torch.Tensor]:
    """The named parameters' full values as CPU tensors, on every rank (a collective)."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    out = {}
    for n in names:
        p = params[n].detach()
        out[n] = (p.full_tensor() if isinstance(p, DTensor) else p).to("cpu").contiguous().clone()
    return out


def load_full_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (the same on every rank) into the sharded parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            p = params[n]
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(t.to(p.device, p.dtype), p.device_mesh, p.placements))
            else:
                p.copy_(t.to(p.device, p.dtype))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's full (unsharded) state dict, keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Shard a full optimizer state dict (from ``full_optimizer_state``) back into ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


class FullModel:
    """A stand-in model whose named_parameters are gathered full tensors (for the checkpoint writer)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def named_parameters(self):
        """The gathered tensors, as a model would list its parameters."""
        return iter(self.tensors.items())


def _comm_device() -> str:
    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
