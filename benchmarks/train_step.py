"""Time one training step (sampling and update) and its peak memory per layer selection, on the same batch.

    python -m onelayer.benchmarks.train_step [--model smollm2-135m] [--out results/train_step.json]
    python -m onelayer.benchmarks.train_step --preset cpu-three-domains --domain agentic --layers 15,all
    python -m onelayer.benchmarks.train_step --preset cpu-three-domains --domain agentic --layers 15,all --dtype bfloat16

``--preset``/``--domain`` take a sweep preset's train options for that domain (batch, lengths, env, action
format) instead of ``onelayer train``'s defaults on Math-v0; ``--layers`` picks the selections; ``--dtype`` is
``onelayer train --dtype`` (default ``auto``: fp32 on CPU; ``bfloat16`` runs the model in bf16 with fp32 trained
tensors, and the floor is then taken at the machine's bf16 matmul throughput).

For the first, a middle and the last layer and ``all``, each in a fresh process
(``ru_maxrss`` is a process's high-water mark) with ``onelayer train``'s default
settings: the trainer samples one batch of Math-v0 rollouts with its engine
(the same seed and base model, so the same tokens for every selection) and then
runs ``--repeats`` PPO updates on it (forward, backward, optimizer step). Prints
sampling and update seconds, peak resident memory (or peak CUDA memory) and
ratios to ``all``, next to the physical floor: the update's matmul FLOPs over
the machine's measured matmul throughput (the fraction of the floor achieved
is floor / measured). Writes JSON with the machine's description.

FLOPs of one update (P: parameters of one decoder block, N: tokens the update
forwards (each distinct prompt once, as ``share_prompts`` packs them, plus every
response; score-format rows: prompt plus every candidate action; a micro-batch whose
advantages are all zero is skipped, so not counted), R: tokens the
LM head scores (response or candidate tokens), V x H: the LM head; attention scores, norms and
the optimizer are left out, a few percent at these lengths):
``all``: every block forward and weight gradient, every block but the first backward for its input,
the frozen head forward and backward for its input: ``(6L - 2) PN + 4VHR``; blocks >= l trained, l the lowest: the blocks from
l up forward (2PN each) and backward for their input (2PN each, none for l),
block l's weight gradient (2PN), the head forward and backward for its input
(4VHR): ``4PN(L - l) + 4VHR``. The blocks below l are frozen and their output
comes from the sampler (``HFEngine.capture_block``): not counted, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from onelayer.agents.models import DTYPE_NAMES
from onelayer.benchmarks.machine import describe_machine, peak_rss_bytes


def matmul_gflops(seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul throughput (GFLOP/s, fp32 unless ``dtype``) on the model's shapes: (4096 x 576) @ (576 x 1536)."""
    a, b = torch.randn(4096, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
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
        return (6.0 * num - 2.0) * per_block * tokens + 4.0 * head * response_tokens
    return 4.0 * per_block * tokens * (num - int(layers)) + 4.0 * head * response_tokens


def sampling_flops(model, tokens: int, head_tokens: int) -> float:
    """Matmul FLOPs of sampling the batch: every block forward over ``tokens`` (each distinct prompt once, then
    the responses; score format: every row's prompt and candidates), the head over ``head_tokens``."""
    from onelayer.agents.models import find_decoder_blocks

    blocks = find_decoder_blocks(model)[1]
    per_block = sum(p.numel() for p in blocks[0].parameters())
    return 2.0 * len(blocks) * per_block * tokens + 2.0 * model.get_output_embeddings().weight.numel() * head_tokens


def forwarded_tokens(rows, share_prompts: bool, micro_batch_size: int, skip_silent: bool) -> tuple[int, int]:
    """(tokens the update forwards, tokens the LM head scores) over ``rows`` (training/rows.py ``Row``s), as
    ``ppo_update`` passes them: micro-batches of ``micro_batch_size`` in order, each distinct prompt once per
    micro-batch (``share_prompts``), a micro-batch whose advantages are all zero skipped (``skip_silent``:
    ``beta == 0``, where it adds no gradient)."""
    fwd = head = 0
    for s in range(0, len(rows), micro_batch_size):
        mb = rows[s : s + micro_batch_size]
        if skip_silent and all(r.advantage == 0.0 for r in mb):
            continue
        seen: set[tuple[int, ...]] = set()
        for r in mb:
            if r.candidates:  # score format: the prompt and every admissible action, packed
                cand = sum(len(c) for c in r.candidates)
                fwd += len(r.prompt_ids) + cand
                head += cand
                continue
            key = tuple(r.prompt_ids)
            if not share_prompts or key not in seen:
                fwd += len(r.prompt_ids)
                seen.add(key)
            fwd += len(r.response_ids)
            head += len(r.response_ids)
    return fwd, head


def _config(model_spec: str, layers: str, num_rollouts: int, response_tokens: int, device: str, preset: str | None,
            domain: str, dtype: str = "auto"):
    from onelayer.training.config import TrainConfig

    out = f"/tmp/onelayer-bench-{os.getpid()}"
    if preset is None:
        return TrainConfig(model=model_spec, layers=layers, out=out, steps=1, num_tasks=num_rollouts // 8,
                           num_generations=8, max_new_tokens=response_tokens, device=device, dtype=dtype)
    from onelayer.benchmarks.sweep import SweepSpec, preset_spec

    spec = SweepSpec.from_dict(preset_spec(preset))
    opts = {k: v for k, v in spec.train_options(domain).items() if k not in ("steps",)}
    opts.update(model=model_spec, layers=layers, out=out, steps=1, device=device, lr=spec.domain_lr(domain), eval_size=0,
                dtype=dtype)
    return TrainConfig.from_dict(opts, where=f"preset {preset} domain {domain}")


def measure(model_spec: str, layers: str, num_rollouts: int, response_tokens: int, repeats: int, device: str,
            preset: str | None = None, domain: str = "math", sample_repeats: int = 1, dtype: str = "auto") -> dict:
    """One selection in this process: sample a batch with the trainer's engine, run ``repeats`` updates."""
    import shutil

    from onelayer.training.rows import rows_from
    from onelayer.training.trainer import Trainer

    cfg = _config(model_spec, layers, num_rollouts, response_tokens, device, preset, domain, dtype)
    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = Trainer(cfg)
    samples = []
    for _ in range(sample_repeats):  # the same step's seed: the same batch each time
        t0 = time.perf_counter()
        trajs = trainer.sample(1)
        samples.append(time.perf_counter() - t0)
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
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss_bytes()
    steps = [s for t in trajs for s in t.steps]
    rows = rows_from(trajs, adv)
    tokens, head_tokens = (cfg.num_iterations * n for n in forwarded_tokens(
        rows, cfg.share_prompts, cfg.micro_batch_size, skip_silent=cfg.beta == 0))
    sampled = forwarded_tokens(rows, True, max(1, len(rows)), skip_silent=False)  # the whole batch, one pass
    times.sort()
    samples.sort()
    return {"layers": layers, "trainable_params": trainer.selection.num_trainable,
            "sampling_s": samples[len(samples) // 2], "step_s": times[len(times) // 2], "peak_mem_bytes": peak,
            "rows": len(rows), "silent_rows": sum(r.advantage == 0.0 for r in rows),
            "sampled_tokens": sampled[0], "sampling_flops": sampling_flops(trainer.model, *sampled),
            "tokens": tokens, "response_tokens": head_tokens,
            "sampler_captured": all(s.lower_hidden is not None for s in steps),
            "flops": update_flops(trainer.model, layers, tokens, head_tokens)}


def dtype_label(result: dict) -> str:
    """The compute dtype of a stored result as the floor's text names it (results before --dtype: fp32)."""
    name = result.get("dtype", "float32")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def print_table(result: dict) -> None:
    """The table of a stored result: sampling and update seconds, the floor and peak memory, each against ``all``."""
    threads = result.get("machine", {}).get("threads", "?")
    print(f"matmul throughput: {result['matmul_gflops']:.1f} GFLOP/s ({dtype_label(result)}, {threads} threads)")
    print(f"{'layers':>6} {'trainable':>11} {'sample s':>8} {'x all':>5} {'update s':>8} {'x all':>5} "
          f"{'floor s':>7} {'of floor':>8} {'peak MiB':>8} {'x all':>5}")
    for r in result["rows"]:
        print(f"{r['layers']:>6} {r['trainable_params']:>11,} {r['sampling_s']:>8.2f} {r['sampling_vs_all']:>5.2f} "
              f"{r['step_s']:>8.2f} {r['time_vs_all']:>5.2f} {r['floor_s']:>7.2f} {r['floor_fraction']:>8.2f} "
              f"{r['peak_mem_bytes'] / 2**20:>8.0f} {r['memory_vs_all']:>5.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rollouts", type=int, default=64, help="rollouts in the batch (8 per task)")
    ap.add_argument("--response-tokens", type=int, default=20, help="max_new_tokens (Math-v0's training default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default=None, help="take this sweep preset's train options for --domain")
    ap.add_argument("--domain", default="math")
    ap.add_argument("--layers", default=None, help="comma list of selections (default: first, middle, last, all)")
    ap.add_argument("--dtype", default="auto", choices=("auto", *DTYPE_NAMES),
                    help="onelayer train --dtype: auto (fp32 on CPU), float32, bfloat16, ...")
    ap.add_argument("--sample-repeats", type=int, default=3, help="samplings of the same batch (median reported)")
    ap.add_argument("--out", default="results/train_step.json")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one is not None:  # child process: one selection, fresh memory high-water mark
        print(json.dumps(measure(args.model, args._one, args.rollouts, args.response_tokens, args.repeats, args.device,
                                 args.preset, args.domain, args.sample_repeats, args.dtype)))
        return
    from onelayer.agents.models import load_model

    num_layers = load_model(args.model, "cpu")[0].config.num_hidden_layers
    selections = (args.layers.split(",") if args.layers
                  else ["0", str(num_layers // 2), str(num_layers - 1), "all"])
    if "all" not in selections:
        selections.append("all")  # the ratios' reference
    load_before = [round(x, 2) for x in os.getloadavg()]  # a busy machine makes every ratio noise
    from onelayer.agents.models import choose_device, choose_dtype

    compute = choose_dtype(args.dtype, choose_device(args.device))
    gflops = matmul_gflops(dtype=compute)
    rows = []
    for sel in selections:
        cmd = [sys.executable, "-m", "onelayer.benchmarks.train_step", "--model", args.model, "--rollouts", str(args.rollouts),
               "--response-tokens", str(args.response_tokens), "--repeats", str(args.repeats), "--device", args.device,
               "--domain", args.domain, "--sample-repeats", str(args.sample_repeats), "--dtype", args.dtype,
               "--_one", sel]
        if args.preset:
            cmd += ["--preset", args.preset]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"--layers {sel} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured --layers {sel}", file=sys.stderr)
    full = next(r for r in rows if r["layers"] == "all")
    for r in rows:
        r["time_vs_all"] = r["step_s"] / full["step_s"]
        r["sampling_vs_all"] = r["sampling_s"] / full["sampling_s"]
        r["memory_vs_all"] = r["peak_mem_bytes"] / full["peak_mem_bytes"]
        r["floor_s"] = r["flops"] / (gflops * 1e9)
        r["floor_fraction"] = r["floor_s"] / r["step_s"]
        if "sampling_flops" in r:
            r["sampling_floor_s"] = r["sampling_flops"] / (gflops * 1e9)
    result = {"command": "python -m onelayer.benchmarks.train_step " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(), "model": args.model, "rollouts": args.rollouts,
              "preset": args.preset, "domain": args.domain if args.preset else "math",
              "response_tokens": args.response_tokens, "dtype": str(compute).removeprefix("torch."),
              "matmul_gflops": gflops, "load_before": load_before,
              "rows": rows}
    from onelayer.io import atomic_write_json

    atomic_write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
