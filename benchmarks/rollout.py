"""Rollout throughput: onelayer's engines against plain ``transformers`` ``generate``, side by side.

    python -m onelayer.benchmarks.rollout [--model smollm2-135m] [--batch-sizes 1,8,64] [--engines hf,llamacpp]

Same model, same prompts (procedural math questions from ``onelayer/Math-v0``
in the math prompt template; from batch 8 on, groups of 8 copies of a task as
the trainer sends them), same sampling (temperature 1, top-p 1, no top-k,
``--max-new-tokens``, EOS ends a response). Counted: generated tokens up to and
including EOS, per wall-clock second, after one warm-up call; ``repeats`` calls
with seeds 0.. are summed. The llamacpp engine is built as in training with the
middle layer trainable (kept in fp32 and synced), and the section also reports
the time of a ``sync_weights`` of that layer and the engine's log-prob mismatch
with the HF model on its own samples (teacher-forced through HF).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from onelayer.agents.engine import SamplingParams

GROUP = 8


def bench_prompts(tokenizer, batch: int, group: int = GROUP) -> list[list[int]]:
    """``batch`` prompts: distinct math tasks, each repeated ``min(group, batch)`` times."""
    import gymnasium as gym

    import onelayer.envs  # noqa: F401  (registers env ids)
    from onelayer.agents.prompts import PromptBuilder

    builder = PromptBuilder.for_domain(tokenizer, "onelayer/Math-v0")
    env = gym.make("onelayer/Math-v0")
    g = min(group, batch)
    tasks = [builder.encode(env.reset(seed=1000 + i)[0]) for i in range(-(-batch // g))]
    return [tasks[i // g] for i in range(batch)]


def _count(row: list[int], eos: set[int]) -> int:
    for k, t in enumerate(row):
        if t in eos:
            return k + 1
    return len(row)


def run_generate(model, tokenizer, prompts: list[list[int]], params: SamplingParams, eos: set[int]) -> int:
    """Plain ``model.generate`` on left-padded prompts; returns tokens generated up to each row's EOS."""
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(params.seed)
    greedy = params.temperature <= 0
    kw = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, do_sample=not greedy, max_new_tokens=params.max_new_tokens,
                             pad_token_id=pad, **kw)
    return sum(_count(row, eos) for row in out[:, width:].tolist())


def logprob_mismatch(model, prompts: list[list[int]], gens) -> dict:
    """|engine - HF| log-prob of the engine's sampled tokens, teacher-forced through the HF model (T = 1)."""
    diffs = []
    for p, g in zip(prompts, gens):
        if not g.token_ids:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([p + g.token_ids])).logits[0, len(p) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.token_ids)[:, None]).squeeze(-1)
        diffs.append((torch.tensor(g.logprobs) - ref).abs())
    d = torch.cat(diffs)
    return {"tokens": int(d.numel()), "mean_abs": float(d.mean()), "p99_abs": float(d.quantile(0.99)),
            "max_abs": float(d.max())}


def make_bench_engine(name: str, model, tokenizer, max_batch_size: int):
    """An engine as the trainer builds it; for llamacpp the middle layer is trainable (fp32 in its GGUF).
    ``hf-dynamic``: the HF engine with transformers' concatenating ``DynamicCache`` (the in-place cache's baseline)."""
    from onelayer.agents.engine import HFEngine, make_engine

    if name == "hf-dynamic":
        return HFEngine(model, tokenizer, max_batch_size=max_batch_size, roomy_cache=False)

    if name == "llamacpp":
        mid = f"model.layers.{model.config.num_hidden_layers // 2}."
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(mid))
        try:
            return make_engine(name, model, tokenizer, max_batch_size=max_batch_size)
        finally:
            for p in model.parameters():
                p.requires_grad_(False)
    return make_engine(name, model, tokenizer, max_batch_size=max_batch_size)


def measure(model, tokenizer, batch_sizes: list[int], engines: list[str], max_new_tokens: int = 48,
            repeats: int = 2, temperature: float = 1.0, top_p: float = 1.0) -> dict:
    """Tokens/s and seconds per batch of every engine and of plain ``generate`` at each batch size."""
    from onelayer.agents.engine import HFEngine
    from onelayer.agents.weight_sync import trained_tensors

    eos = set(HFEngine(model, tokenizer).eos_ids)
    rows, extra = [], {}
    built = {}
    for name in engines:
        t0 = time.perf_counter()
        built[name] = make_bench_engine(name, model, tokenizer, max(batch_sizes))
        extra.setdefault(name, {})["build_s"] = time.perf_counter() - t0
    for batch in batch_sizes:
        prompts = bench_prompts(tokenizer, batch)
        runners = {"generate": lambda p, prm: run_generate(model, tokenizer, p, prm, eos)}
        for name, eng in built.items():
            runners[name] = lambda p, prm, eng=eng: sum(len(g.token_ids) for g in eng.generate(p, prm))
        for name, fn in runners.items():
            fn(prompts[:1], SamplingParams(4, temperature, top_p, 123))  # warm-up
            tokens, secs = 0, []
            for r in range(repeats):
                t0 = time.perf_counter()
                tokens += fn(prompts, SamplingParams(max_new_tokens, temperature, top_p, r))
                secs.append(time.perf_counter() - t0)
            rows.append({"engine": name, "batch": batch, "tokens": tokens, "calls": repeats,
                         "seconds_per_batch": statistics.median(secs), "tokens_per_s": tokens / sum(secs)})
            print(f"rollout: {name:>9} batch {batch:>3}: {rows[-1]['tokens_per_s']:7.1f} tokens/s", file=sys.stderr)
    base = {r["batch"]: r["tokens_per_s"] for r in rows if r["engine"] == "generate"}
    for r in rows:
        r["speedup_vs_generate"] = r["tokens_per_s"] / base[r["batch"]]
    if "llamacpp" in built:
        eng = built["llamacpp"]
        names = sorted(eng.fp32)
        times = []
        for _ in range(5):
            times.append(eng.sync_weights(trained_tensors(model, names)).seconds)
        extra["llamacpp"].update(sync_tensors=len(names), sync_bytes=eng.last_sync.bytes, sync_s_median=statistics.median(times))
        prompts = bench_prompts(tokenizer, 16)
        gens = eng.generate(prompts, SamplingParams(max_new_tokens, 1.0, 1.0, 7))
        extra["llamacpp"]["logprob_mismatch"] = logprob_mismatch(model, prompts, gens)
        eng.close()
    return {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "repeats": repeats,
            "group_size": GROUP, "rows": rows, "engines": extra}


def print_table(result: dict) -> None:
    """The rollout rows as a text table."""
    print(f"{'engine':>10} {'batch':>6} {'tokens':>7} {'s/batch':>8} {'tokens/s':>9} {'x generate':>10}")
    for r in result["rows"]:
        print(f"{r['engine']:>10} {r['batch']:>6} {r['tokens']:>7} {r['seconds_per_batch']:>8.2f} "
              f"{r['tokens_per_s']:>9.1f} {r['speedup_vs_generate']:>10.2f}")
    lc = result["engines"].get("llamacpp")
    if lc and "sync_s_median" in lc:
        m = lc["logprob_mismatch"]
        print(f"llamacpp: sync of {lc['sync_tensors']} tensors ({lc['sync_bytes'] / 2**20:.1f} MiB) "
              f"{1000 * lc['sync_s_median']:.1f} ms; log-prob |llamacpp - HF| mean {m['mean_abs']:.4f}, "
              f"p99 {m['p99_abs']:.4f}, max {m['max_abs']:.4f} nats over {m['tokens']} tokens")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-sizes", default="1,8,64")
    ap.add_argument("--engines", default="hf,llamacpp", help="hf, hf-dynamic, llamacpp, vllm")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/rollout.json")
    a = ap.parse_args(argv)
    from onelayer.agents.models import load_model
    from onelayer.benchmarks.machine import describe_machine
    from onelayer.io import atomic_write_json

    model, tok, _ = load_model(a.model, "cpu")
    result = measure(model, tok, [int(b) for b in a.batch_sizes.split(",")], a.engines.split(","), a.max_new_tokens,
                     a.repeats)
    print_table(result)
    result.update(command="python -m onelayer.benchmarks.rollout " + " ".join(argv if argv is not None else sys.argv[1:]),
                  machine=describe_machine(("transformers", "llama-cpp-python")), model=a.model)
    atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
