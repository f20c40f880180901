"""Time one training step and measure peak memory per layer selection, on the same batch.

    python -m onelayer.benchmarks.train_step [--model smollm2-135m] [--out results/train_step.json]

For ``none``, a first, a middle and the last layer, and ``all``: the time of
one PPO update (forward, backward, optimizer step; no sampling) on one fixed
batch of rollouts, its peak resident memory (CPU: a fresh process per
selection, ru_maxrss) or peak CUDA memory, and ratios to ``all``. Prints a
table and writes JSON with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from onelayer.benchmarks.machine import describe_machine


def measure(model_spec: str, layers: str, num_rollouts: int, response_tokens: int, repeats: int, device: str) -> dict:
    """One selection in this process: build a fixed batch, run ``repeats`` updates, report the median."""
    from onelayer.agents.trajectory import Step, Trajectory
    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    cfg = TrainConfig(model=model_spec, layers=layers, out=f"/tmp/onelayer-bench-{os.getpid()}", steps=0,
                      num_tasks=num_rollouts // 8, num_generations=8, max_new_tokens=response_tokens,
                      kl_metric=False, device=device, max_grad_norm=1.0)
    import shutil

    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = Trainer(cfg)
    tok = trainer.tokenizer
    g = torch.Generator().manual_seed(0)
    prompt = trainer.prompts.encode("What is 17 + 25?")
    trajs = []
    for i in range(num_rollouts):
        resp = torch.randint(100, 20000, (response_tokens,), generator=g).tolist()
        t = Trajectory(task_id=i // 8, group=i // 8, sample=i % 8)
        t.steps.append(Step(prompt, resp, [0.0] * len(resp), tok.decode(resp), float(i % 2), None))
        trajs.append(t)
    adv, _ = trainer.advantages(trajs)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.update(trajs, adv)  # with --layers none: the forward pass only (nothing to train)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    shutil.rmtree(cfg.out, ignore_errors=True)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    times.sort()
    return {"layers": layers, "trainable_params": trainer.selection.num_trainable,
            "step_s": times[len(times) // 2], "peak_mem_bytes": peak}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rollouts", type=int, default=64, help="rollouts in the batch (8 per task)")
    ap.add_argument("--response-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results/train_step.json")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one is not None:  # child process: one selection, fresh memory high-water mark
        print(json.dumps(measure(args.model, args._one, args.rollouts, args.response_tokens, args.repeats, args.device)))
        return
    from onelayer.agents.models import load_model

    num_layers = load_model(args.model, "cpu")[0].config.num_hidden_layers
    selections = ["none", "0", str(num_layers // 2), str(num_layers - 1), "all"]
    rows = []
    for sel in selections:
        cmd = [sys.executable, "-m", "onelayer.benchmarks.train_step", "--model", args.model, "--rollouts", str(args.rollouts),
               "--response-tokens", str(args.response_tokens), "--repeats", str(args.repeats), "--device", args.device, "--_one", sel]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"measured --layers {sel}", file=sys.stderr)
    full = rows[-1]
    for r in rows:
        r["time_vs_all"] = r["step_s"] / full["step_s"]
        r["memory_vs_all"] = r["peak_mem_bytes"] / full["peak_mem_bytes"]
    print(f"{'layers':>8} {'trainable':>12} {'step s':>8} {'x all':>6} {'peak MiB':>9} {'x all':>6}")
    for r in rows:
        print(f"{r['layers']:>8} {r['trainable_params']:>12,} {r['step_s']:>8.2f} {r['time_vs_all']:>6.2f} "
              f"{r['peak_mem_bytes'] / 2**20:>9.0f} {r['memory_vs_all']:>6.2f}")
    result = {"command": "python -m onelayer.benchmarks.train_step " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(), "model": args.model, "rollouts": args.rollouts,
              "response_tokens": args.response_tokens, "rows": rows}
    from onelayer.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
