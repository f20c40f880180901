"""What the trainer and the PPO update do differently under FSDP, as small hooks.

``SingleProcess`` is the plain run: every hook is the identity or a no-op. ``FSDPHooks``
is one rank of a torchrun job (training/distributed.py): it samples its share of the
task groups with the full weights gathered, pads its rows so every rank runs the same
forward/backward passes, turns the loss denominators, sums and gradient norms into
batch-wide ones with all-reduces, gathers full tensors for checkpoints, and lets rank 0
alone evaluate and write. The trainer and ``ppo_update`` call the same hooks either way,
so the algorithm reads the same in both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import SimpleNamespace

import numpy as np
import torch

from onelayer.agents.rollout import EpisodeSpec
from onelayer.training import checkpoint as ckpt
from onelayer.training import distributed as fsdp
from onelayer.training.losses import AggNorm
from onelayer.training.rows import Row

_NO_OPTIMIZER = SimpleNamespace(state_dict=lambda: {})  # a selection with nothing to train saves an empty state


class SingleProcess:
    """One process holds the whole batch and the whole model."""

    is_main = True
    seed_parts: tuple = ()  # extra parts of the sampling seed
    lockstep = False  # ranks must run the same passes; one process may skip a pass that adds no gradient

    def __init__(self, model):
        self.model = model

    # ---------------------------------------------------------------- the loop
    def my_episodes(self, episodes: list[EpisodeSpec], num_tasks: int) -> list[EpisodeSpec]:
        """The episodes this process samples: all of them."""
        return episodes

    def sampling_weights(self):
        """Weights for sampling: the model's own."""
        return contextlib.nullcontext()

    def on_main(self, fn):
        """Run ``fn`` (e.g. evaluation) and return its result."""
        return fn()

    def merge_records(self, record: dict, returns: list[float], batch_wide: set[str]) -> dict:
        """The step's metrics record, as it is."""
        return record

    def barrier(self) -> None:
        """Nothing to wait for."""

    # -------------------------------------------------------------- checkpoints
    def full_model(self, names: list[str]):
        """Something whose ``named_parameters`` hold the trained tensors' full values: the model."""
        return self.model

    def optimizer_to_save(self, optimizer):
        """Something whose ``state_dict()`` is the optimizer's full state."""
        return optimizer if optimizer is not None else _NO_OPTIMIZER

    def load_checkpoint(self, d, optimizer) -> None:
        """Load checkpoint ``d``'s trained tensors and optimizer state."""
        ckpt.load_trained(self.model, d / ckpt.TRAINED_FILE)
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(d / ckpt.OPTIMIZER_FILE, weights_only=True))

    # ---------------------------------------------------------------- the update
    def update_weights(self):
        """Weights held during the update: the model's own."""
        return contextlib.nullcontext()

    def pad_rows(self, rows: list[Row], pad_id: int, scoring: bool) -> list[Row]:
        """The rows to train on: this batch's."""
        return rows

    def any(self, flag: bool) -> bool:
        """``flag`` over the batch."""
        return flag

    def sum(self, values: list[float]) -> list[float]:
        """Batch-wide sums of per-process sums: the values themselves."""
        return values

    def batch_norm(self, norm: AggNorm, rows: list[Row], resp: torch.Tensor) -> AggNorm:
        """The loss denominators of the mini-batch: already batch-wide."""
        return norm

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate."""
        return loss

    def grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of the parameters' gradients (when they are not clipped)."""
        return torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))

    def item(self, t: torch.Tensor) -> float:
        """A scalar tensor's value."""
        return float(t)

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """The part of a parameter this process holds: all of it."""
        return t


class FSDPHooks(SingleProcess):
    """One rank of an FSDP job: its share of the groups, batch-wide statistics, rank 0 writes."""

    lockstep = True  # every pass is a collective: a rank never skips one the others run

    def __init__(self, model, dist: fsdp.Dist):
        super().__init__(model)
        self.dist = dist
        self.is_main = dist.is_main
        self.seed_parts = (dist.rank,)  # each rank its own sampling stream

    def my_episodes(self, episodes, num_tasks):
        """This rank's contiguous share of the task groups."""
        mine = self.dist.local_groups(num_tasks)
        return [e for e in episodes if e.group in mine]

    def sampling_weights(self):
        """Every rank samples with the full weights gathered (no forward waits for another rank)."""
        return fsdp.full_weights(self.model)

    def on_main(self, fn):
        """Rank 0 runs ``fn`` with the full weights; the others hold their part of the gather, wait and get None."""
        with fsdp.full_weights(self.model):
            res = fn() if self.is_main else None
            fsdp.barrier()
        return res

    def merge_records(self, record, returns, batch_wide):
        """One record for the step from every rank's (the update's metrics are batch-wide already)."""
        gathered = fsdp.gather_objects((record, returns))
        everyone = [r for _, rs in gathered for r in rs]
        out = dict(record)
        for k, v in record.items():
            vals = [g[k] for g, _ in gathered if isinstance(g.get(k), (int, float))]
            if k == "step" or k in batch_wide or not isinstance(v, (int, float)) or not vals:
                continue
            if k in ("no_signal_groups", "env_errors"):
                out[k] = sum(vals)
            elif k.startswith("time/"):
                out[k] = max(vals)
            else:  # every rank holds as many episodes: the mean of means is the batch mean
                out[k] = float(np.mean(vals))
        out.update(reward=float(np.mean(everyone)) if everyone else 0.0,
                   reward_std=float(np.std(everyone)) if everyone else 0.0)
        return out

    def barrier(self):
        """Wait for every rank."""
        fsdp.barrier()

    def full_model(self, names):
        """The trained tensors gathered in full on every rank (a collective)."""
        return fsdp.FullModel(fsdp.full_tensors(self.model, names))

    def optimizer_to_save(self, optimizer):
        """The optimizer's full state gathered on every rank (a collective)."""
        state = fsdp.full_optimizer_state(self.model, optimizer) if optimizer is not None else {}
        return SimpleNamespace(state_dict=lambda: state)

    def load_checkpoint(self, d, optimizer):
        """Every rank reads the checkpoint's full tensors and keeps its shards."""
        from safetensors.torch import load_file

        fsdp.load_full_tensors(self.model, load_file(str(d / ckpt.TRAINED_FILE)))
        if optimizer is not None:
            fsdp.load_optimizer_state(self.model, optimizer, torch.load(d / ckpt.OPTIMIZER_FILE, weights_only=True))

    def update_weights(self):
        """The root unit's tensors (embeddings, final norm, head; frozen) stay gathered through the update.

        The log-prob pass calls the decoder body and the chunked head directly, not the root module,
        so FSDP would not gather them by itself.
        """
        return fsdp.root_weights(self.model)

    def pad_rows(self, rows, pad_id, scoring):
        """Pad to the longest rank's row count with stand-in rows (no tokens count), so every rank runs as many passes."""
        most = int(fsdp.all_reduce([float(len(rows))], op="max")[0])
        if most == 0:
            return rows
        like = rows[0] if rows else Row([pad_id], [pad_id], 0.0, candidates=[[pad_id]] if scoring else None, choice=0)
        return rows + [Row(like.prompt_ids, like.response_ids, 0.0, padding=True, candidates=like.candidates,
                           choice=like.choice) for _ in range(most - len(rows))]

    def any(self, flag):
        """``flag`` on any rank."""
        return fsdp.all_reduce([float(flag)])[0] > 0

    def sum(self, values):
        """Sums over every rank."""
        return fsdp.all_reduce(values)

    def batch_norm(self, norm, rows, resp):
        """The whole batch's denominators over every rank (token-mean over the global batch)."""
        tokens, seqs = fsdp.all_reduce([float(resp.sum()), float(sum(not r.padding for r in rows))])
        return dataclasses.replace(norm, total_tokens=max(tokens, 1.0), num_seqs=int(seqs))

    def scale_loss(self, loss):
        """FSDP averages gradients over ranks: scaling by the world size makes that the batch-wide sum."""
        return loss * self.dist.world_size

    def grad_norm(self, params):
        """The global gradient norm over every rank's shards."""
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])

    def item(self, t):
        """The full value of a DTensor scalar (e.g. a norm over shards)."""
        return float(t.full_tensor() if hasattr(t, "full_tensor") else t)

    def local(self, t):
        """This rank's shard of a parameter (a DTensor)."""
        return t.to_local() if hasattr(t, "to_local") else t
