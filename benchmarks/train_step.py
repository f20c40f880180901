"""Time one training step (sampling and update) and its peak memory per layer selection, on the same batch.

    python -m onelayer.benchmarks.train_step [--model smollm2-135m] [--out results/train_step.json]

For the first, a middle and the last layer and ``all``, each in a fresh process
(``ru_maxrss`` is a process's high-water mark) with ``onelayer train``'s default
settings: the trainer samples one batch of Math-v0 rollouts with its engine
(the same seed and base model, so the same tokens for every selection) and then
runs ``--repeats`` PPO updates on it (forward, backward, optimizer step). Prints
sampling and update seconds, peak resident memory (or peak CUDA memory) and
ratios to ``all``, next to the physical floor: the update's matmul FLOPs over
the machine's measured matmul throughput (the fraction of the floor achieved
is floor / measured). Writes JSON with the machine's description.

FLOPs of one update (P: parameters of one decoder block, N: tokens in the
batch, R: response tokens, V x H: the LM head; attention scores, norms and
the optimizer are left out, a few percent at these lengths):
``all``: 3 (L 2PN + 2VHR); blocks >= l trained, l the lowest: the blocks from
l up forward (2PN each) and backward for their input (2PN each, none for l),
block l's weight gradient (2PN), the head forward and backward for its input
(4VHR): ``4PN(L - l) + 4VHR``. The blocks below l are frozen and their output
comes from the sampler (``HFEngine.capture_block``): not counted, not run.
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


def matmul_gflops(seconds: float = 2.0) -> float:
    """This machine's fp32 matmul throughput (GFLOP/s) on the model's shapes: (4096 x 576) @ (576 x 1536)."""
    a, b = torch.randn(4096, 576), torch.randn(576, 1536)
    torch.mm(a, b)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 4096 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9


def update_flops(model, layers: str, tokens: int, response_tokens: int) -> float:
    """Matmul FLOPs of one update for ``all`` or a single block index (see the module docstring)."""
    from onelayer.agents.models import find_decoder_blocks

    blocks = find_decoder_blocks(model)[1]
    per_block = sum(p.numel() for p in blocks[0].parameters())
    head = model.get_output_embeddings().weight.numel()
    num = len(blocks)
    if layers == "all":
        return 3.0 * (num * 2 * per_block * tokens + 2 * head * response_tokens)
    return 4.0 * per_block * tokens * (num - int(layers)) + 4.0 * head * response_tokens


def measure(model_spec: str, layers: str, num_rollouts: int, response_tokens: int, repeats: int, device: str) -> dict:
    """One selection in this process: sample a batch with the trainer's engine, run ``repeats`` updates."""
    import shutil

    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    cfg = TrainConfig(model=model_spec, layers=layers, out=f"/tmp/onelayer-bench-{os.getpid()}", steps=1,
                      num_tasks=num_rollouts // 8, num_generations=8, max_new_tokens=response_tokens, device=device)
    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trajs = trainer.sample(1)
    sampling_s = time.perf_counter() - t0
    adv, _ = trainer.advantages(trajs)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.update(trajs, adv)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    shutil.rmtree(cfg.out, ignore_errors=True)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    steps = [s for t in trajs for s in t.steps]
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in steps)
    resp = sum(len(s.response_ids) for s in steps)
    times.sort()
    return {"layers": layers, "trainable_params": trainer.selection.num_trainable, "sampling_s": sampling_s,
            "step_s": times[len(times) // 2], "peak_mem_bytes": peak, "tokens": tokens, "response_tokens": resp,
            "sampler_captured": all(s.lower_hidden is not None for s in steps),
            "flops": update_flops(trainer.model, layers, tokens, resp)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rollouts", type=int, default=64, help="rollouts in the batch (8 per task)")
    ap.add_argument("--response-tokens", type=int, default=20, help="max_new_tokens (Math-v0's training default)")
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
    selections = ["0", str(num_layers // 2), str(num_layers - 1), "all"]
    gflops = matmul_gflops()
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
        r["sampling_vs_all"] = r["sampling_s"] / full["sampling_s"]
        r["memory_vs_all"] = r["peak_mem_bytes"] / full["peak_mem_bytes"]
        r["floor_s"] = r["flops"] / (gflops * 1e9)
        r["floor_fraction"] = r["floor_s"] / r["step_s"]
    print(f"matmul throughput: {gflops:.1f} GFLOP/s (fp32, {torch.get_num_threads()} threads)")
    print(f"{'layers':>6} {'trainable':>11} {'sample s':>8} {'x all':>5} {'update s':>8} {'x all':>5} "
          f"{'floor s':>7} {'of floor':>8} {'peak MiB':>8} {'x all':>5}")
    for r in rows:
        print(f"{r['layers']:>6} {r['trainable_params']:>11,} {r['sampling_s']:>8.2f} {r['sampling_vs_all']:>5.2f} "
              f"{r['step_s']:>8.2f} {r['time_vs_all']:>5.2f} {r['floor_s']:>7.2f} {r['floor_fraction']:>8.2f} "
              f"{r['peak_mem_bytes'] / 2**20:>8.0f} {r['memory_vs_all']:>5.2f}")
    result = {"command": "python -m onelayer.benchmarks.train_step " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(), "model": args.model, "rollouts": args.rollouts,
              "response_tokens": args.response_tokens, "matmul_gflops": gflops, "rows": rows}
    from onelayer.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
