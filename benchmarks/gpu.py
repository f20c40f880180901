"""GPU benchmark: vLLM rollout speed, one-layer vs full weight sync, and training-step memory/time by selection.

    python -m onelayer.benchmarks.gpu [--model smollm2-135m] [--layer 15] [--out results/gpu.json]

On one CUDA GPU, with the model in bf16:

1. vLLM tokens/s: ``--prompts`` prompts sampled at temperature 1 to ``--new-tokens``
   tokens (generated tokens / wall time, after one warm-up call).
2. Weight sync: time and bytes to load the trained layer's tensors into vLLM
   vs every tensor of the model (median of ``--repeats``).
3. One PPO update (``benchmarks/train_step.py`` on a fixed batch, a fresh
   process per selection) for ``--layers LAYER`` and ``all``: step time and
   peak GPU memory (``torch.cuda.max_memory_allocated``). For the effect of
   ``--gradient-checkpointing``, compare ``memory/peak_gpu_bytes`` in the
   metrics of two ``onelayer train`` runs.

Prints a table and writes JSON with the machine's description. Without CUDA or
vLLM it exits with code 2 and says what is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def measure_vllm(model_spec: str, layer: int, prompts: int, new_tokens: int, repeats: int) -> dict:
    """Tokens/s of the vLLM engine and the cost of a one-layer vs a full sync."""
    import torch

    from onelayer.agents.engine import SamplingParams
    from onelayer.agents.models import load_model
    from onelayer.agents.vllm_engine import VLLMEngine
    from onelayer.agents.weight_sync import all_tensors, trained_tensors
    from onelayer.training.layers import select_parameters

    model, tok, _ = load_model(model_spec, "cuda", "bfloat16")
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                                  add_generation_prompt=True)
    engine = VLLMEngine(model, tok, max_batch_size=prompts, gpu_memory_utilization=0.4, enable_sleep_mode=False)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    engine.generate([ids] * 4, params)  # warm-up (compilation, CUDA graphs)
    torch.cuda.synchronize()
    t = time.perf_counter()
    gens = engine.generate([ids] * prompts, params)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    generated = sum(len(g.token_ids) for g in gens)
    layer_named = trained_tensors(model, select_parameters(model, str(layer)).param_names)
    every = all_tensors(model)
    syncs = {"layer": [], "all": []}
    for _ in range(repeats):
        for key, named in (("layer", layer_named), ("all", every)):
            syncs[key].append(engine.sync_weights(named))
    return {"model": model_spec, "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "prompts": prompts, "new_tokens": new_tokens, "generated_tokens": generated,
            "generate_s": elapsed, "tokens_per_s": generated / elapsed,
            "sync": {k: {"tensors": v[0].tensors, "bytes": v[0].bytes,
                         "seconds_median": statistics.median(s.seconds for s in v)} for k, v in syncs.items()}}


def measure_train_step(model_spec: str, layers: str, rollouts: int, response_tokens: int, repeats: int) -> dict:
    """One selection's update time and peak GPU memory, in a fresh process (its own peak)."""
    cmd = [sys.executable, "-m", "onelayer.benchmarks.train_step", "--model", model_spec, "--rollouts", str(rollouts),
           "--response-tokens", str(response_tokens), "--repeats", str(repeats), "--device", "cuda", "--_one", layers]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def _missing() -> str | None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return f"this benchmark needs a CUDA GPU; torch {torch.__version__} sees none"
    if importlib.util.find_spec("vllm") is None:
        return "this benchmark needs vLLM: pip install 'onelayer[vllm]' on the CUDA machine"
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=15, help="the single trained layer compared with all")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rollouts", type=int, default=64)
    ap.add_argument("--response-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/gpu.json")
    args = ap.parse_args(argv)
    reason = _missing()
    if reason:
        print(f"error: {reason}; nothing was measured", file=sys.stderr)
        raise SystemExit(2)
    from onelayer.benchmarks.machine import describe_machine

    vllm_result = measure_vllm(args.model, args.layer, args.prompts, args.new_tokens, args.repeats)
    steps = [measure_train_step(args.model, sel, args.rollouts, args.response_tokens, args.repeats)
             for sel in (str(args.layer), "all")]
    s = vllm_result["sync"]
    print(f"vLLM: {vllm_result['tokens_per_s']:.0f} tokens/s ({vllm_result['generated_tokens']} tokens, "
          f"{args.prompts} prompts)")
    print(f"{'sync':>8} {'tensors':>8} {'MiB':>10} {'ms':>8}")
    for k in ("layer", "all"):
        print(f"{k:>8} {s[k]['tensors']:>8} {s[k]['bytes'] / 2**20:>10.1f} {1000 * s[k]['seconds_median']:>8.1f}")
    print(f"{'layers':>8} {'trainable':>12} {'step s':>8} {'peak GiB':>9}")
    for r in steps:
        print(f"{r['layers']:>8} {r['trainable_params']:>12,} {r['step_s']:>8.2f} {r['peak_mem_bytes'] / 2**30:>9.2f}")
    result = {"command": "python -m onelayer.benchmarks.gpu " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(("vllm", "transformers", "flash-attn")), "vllm": vllm_result,
              "train_step": steps, "rollouts": args.rollouts, "response_tokens": args.response_tokens}
    from onelayer.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
