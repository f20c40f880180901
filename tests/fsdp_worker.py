"""One rank of the 2-process FSDP test (launched by torchrun from test_fsdp.py; not a test module itself).

    python -m torch.distributed.run --nproc-per-node 2 tests/fsdp_worker.py CONFIG.json TRAJS.pt OUT_DIR

1. Fixed batch: the trajectories the single-process test sampled, split by group over the ranks,
   go through advantages() and update(); rank 0 writes the gathered weights, the gathered gradients
   the optimizer stepped with, and the update's metrics.
2. A 2-step ``--fsdp`` run, then a resume to step 3; every rank writes the gathered weights it sees.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from onelayer.training import distributed as fsdp
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer


def main(config_path: str, trajs_path: str, out: str) -> None:
    out = Path(out)
    base = json.loads(Path(config_path).read_text())

    t = Trainer(TrainConfig.from_dict({**base, "fsdp": True, "out": str(out / "fixed")}))
    mine = t.dist.local_groups(t.config.num_tasks)
    trajs = [tr for tr in torch.load(trajs_path, weights_only=False) if tr.group in mine]
    grads = {}
    t.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.update(full_grads(t)))
    stats = t.update(trajs, t.advantages(trajs)[0])
    weights = fsdp.full_tensors(t.model, t.param_names)
    if t.dist.is_main:
        torch.save({"weights": weights, "grads": grads, "stats": stats}, out / "fixed.pt")

    run = {**base, "fsdp": True, "out": str(out / "run"), "steps": 2}
    t = Trainer(TrainConfig.from_dict(run))
    t.train(progress=False)
    torch.save(fsdp.full_tensors(t.model, t.param_names), out / f"run-rank{t.dist.rank}.pt")

    t = Trainer(TrainConfig.from_dict({**run, "steps": 3}), resume=True)
    assert t.start_step == 2, t.start_step
    t.train(progress=False)
    torch.save(fsdp.full_tensors(t.model, t.param_names), out / f"resumed-rank{t.dist.rank}.pt")
    dist.destroy_process_group()


def full_grads(t: Trainer) -> dict[str, torch.Tensor]:
    """The selected parameters' full gradients as the optimizer is about to use them (a collective)."""
    from torch.distributed.tensor import DTensor

    params = dict(t.model.named_parameters())
    return {n: (g.full_tensor() if isinstance(g, DTensor) else g).detach().cpu().clone()
            for n in t.param_names if (g := params[n].grad) is not None}


if __name__ == "__main__":
    main(*sys.argv[1:4])
