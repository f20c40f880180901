"""``onelayer bench``: the speed sections side by side on one machine, model and batch.

1. ``rollout``: generated tokens/s and seconds per batch of onelayer's engines vs
   plain ``transformers`` ``generate`` at each batch size (``benchmarks/rollout.py``).
   Where vLLM runs (its CPU build in the venv of ``.ci/vllm_env.sh``, or CUDA), the
   ``vllm`` engine joins them in the same run: the anchor a user would pick instead.
2. ``train``: one PPO update's time and peak memory for ``none``, the first, middle
   and last layer and ``all``, on one fixed batch, with ratios to ``all``
   (``benchmarks/train_step.py``, a fresh process per selection).
3. ``alfworld``: ALFWorld environment steps/s with 1 and N env workers, the
   environments alone (random admissible actions, ``benchmarks/alfworld_steps.py``)
   and multi-turn with the LLM choosing every action (the rollout collector over
   ``ALFWorldVecEnv``).
4. ``gpu``: vLLM tokens/s and weight sync (``benchmarks/gpu.py``), skipped with the
   reason on a machine without CUDA or vLLM.

Prints one table per section and writes everything, with the machine's
description and its load average before each section, as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = ("rollout", "train", "alfworld", "gpu")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class TimedEngine:
    """Wraps an engine and adds up the wall time of its ``generate`` calls."""

    def __init__(self, engine):
        self.engine, self.seconds, self.calls = engine, 0.0, 0

    def generate(self, prompts, params):
        t0 = time.perf_counter()
        try:
            return self.engine.generate(prompts, params)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    def sync_weights(self, named_tensors):
        return self.engine.sync_weights(named_tensors)


def alfworld_with_llm(model, tokenizer, engine_name: str, workers: list[int], num_tasks: int = 2, group: int = 8,
                      max_turns: int = 6, max_new_tokens: int = 32, data_path: str | None = None) -> list[dict]:
    """Multi-turn ALFWorld episodes with the LLM acting: env steps/s (LLM included) per worker count."""
    from onelayer.agents.engine import SamplingParams
    from onelayer.agents.prompts import PromptBuilder
    from onelayer.agents.rollout import EpisodeSpec, collect
    from onelayer.benchmarks.rollout import make_bench_engine
    from onelayer.envs.alfworld_vec import ALFWorldVecEnv

    engine = TimedEngine(make_bench_engine(engine_name, model, tokenizer, num_tasks * group))
    builder = PromptBuilder.for_domain(tokenizer, "onelayer/ALFWorld-v0")
    specs = [EpisodeSpec(group=g, sample=k, options={"task_id": g}) for g in range(num_tasks) for k in range(group)]
    params = SamplingParams(max_new_tokens, 1.0, 1.0, 0)
    kwargs = {"data_path": data_path} if data_path else {}
    # One untimed turn first, so no timed run pays for the engine's first-use costs (llama.cpp's context).
    with ALFWorldVecEnv(num_envs=len(specs), num_workers=workers[0], env_kwargs=kwargs) as vec:
        collect(engine, builder, vec, specs, params, max_turns=1, parse_actions=True)
    rows = []
    for w in workers:
        with ALFWorldVecEnv(num_envs=len(specs), num_workers=w, env_kwargs=kwargs) as vec:
            engine.seconds = 0.0
            t0 = time.perf_counter()
            trajs = collect(engine, builder, vec, specs, params, max_turns=max_turns, parse_actions=True)
            elapsed = time.perf_counter() - t0
        steps = sum(len(t.steps) for t in trajs)
        rows.append({"workers": w, "episodes": len(trajs), "env_steps": steps, "seconds": elapsed,
                     "steps_per_s": steps / elapsed, "llm_seconds": engine.seconds,
                     "env_and_other_seconds": elapsed - engine.seconds, "engine": engine_name})
        print(f"alfworld+LLM: {w} worker(s): {rows[-1]['steps_per_s']:.2f} steps/s", file=sys.stderr)
    inner = engine.engine
    if hasattr(inner, "close"):
        inner.close()
    return rows


def run_sections(sections: list[str], model_spec: str = "smollm2-135m", batch_sizes=(1, 8, 64),
                 engines=("hf", "llamacpp"), max_new_tokens: int = 48, repeats: int = 2, train_rollouts: int = 64,
                 train_response_tokens: int = 20, train_repeats: int = 3, alfworld_workers: list[int] | None = None,
                 alfworld_engine: str = "llamacpp", alfworld_steps: int = 1600) -> dict:
    """Run the named sections and return their results (one key per section)."""
    from onelayer.benchmarks.machine import describe_machine

    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        from onelayer.errors import UserError

        raise UserError(f"unknown bench section(s) {', '.join(bad)}: choose from {', '.join(SECTIONS)}")
    out: dict = {"machine": describe_machine(("transformers", "llama-cpp-python", "alfworld")), "model": model_spec}
    model = tok = None
    workers = alfworld_workers or sorted({1, os.cpu_count() or 1})

    def loaded():
        nonlocal model, tok
        if model is None:
            from onelayer.agents.models import load_model

            model, tok, _ = load_model(model_spec)
        return model, tok

    if "rollout" in sections:
        from onelayer.benchmarks.rollout import measure

        engines, vllm_note = _with_vllm(list(engines))
        if vllm_note.get("vllm"):
            out["machine"]["vllm"] = vllm_note["vllm"]
        load = _load()
        out["rollout"] = measure(*loaded(), list(batch_sizes), engines, max_new_tokens, repeats)
        out["rollout"]["load_before"] = load
        out["rollout"]["vllm"] = vllm_note
    if "train" in sections:
        from onelayer.benchmarks import train_step

        load = _load()
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "train.json"
            train_step.main(["--model", model_spec, "--rollouts", str(train_rollouts), "--response-tokens",
                             str(train_response_tokens), "--repeats", str(train_repeats), "--out", str(path)])
            out["train"] = json.loads(path.read_text())
        out["train"]["load_before"] = load
    if "alfworld" in sections:
        from onelayer.benchmarks.alfworld_steps import run

        load = _load()
        env_rows = [dict(run(16, w, alfworld_steps, {}), mode=f"16 envs, {w} worker(s), random actions") for w in workers]
        llm_rows = alfworld_with_llm(*loaded(), alfworld_engine, workers)
        out["alfworld"] = {"env_only": env_rows, "with_llm": llm_rows, "load_before": load}
    if "gpu" in sections:
        out["gpu"] = _gpu_section(model_spec)
    out["load_after"] = _load()
    return out


def _with_vllm(engines: list[str]) -> tuple[list[str], dict]:
    """The rollout engines plus ``vllm`` where vLLM runs here, and a note saying which vLLM or why not.

    On vLLM's CPU build the KV cache is set to 2 GiB (``VLLM_CPU_KVCACHE_SPACE``, unless set): enough for
    64 sequences of the benchmark's length, where vLLM's own default would reserve 30% of the RAM.
    """
    from onelayer.agents.vllm_engine import check_vllm_available
    from onelayer.errors import UserError

    try:
        device = check_vllm_available()
    except UserError as e:
        return engines, {"skipped": str(e)}
    import vllm

    if device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    note = {"vllm": vllm.__version__, "device": device, "kv_cache_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}
    return (engines if "vllm" in engines else [*engines, "vllm"]), note


def _gpu_section(model_spec: str) -> dict:
    import importlib.util

    if importlib.util.find_spec("onelayer.benchmarks.gpu") is None:
        return {"skipped": "benchmarks/gpu.py is not part of this installation"}
    from onelayer.benchmarks import gpu

    reason = gpu._missing()
    if reason:
        return {"skipped": reason}
    return gpu.measure_vllm(model_spec, 15, 64, 256, 3)


def print_tables(result: dict) -> None:
    """Every section's table."""
    print(f"machine: {result['machine']}")
    if "rollout" in result:
        from onelayer.benchmarks.rollout import print_table

        print(f"\n== rollout (load before: {result['rollout']['load_before']})")
        print_table(result["rollout"])
        note = result["rollout"].get("vllm", {})
        print(f"vllm: {note['skipped']}" if "skipped" in note else
              f"vllm {note.get('vllm')} on {note.get('device')} (rows 'vllm'; on the CPU eager, in the model's dtype)")
    if "train" in result:
        from onelayer.benchmarks.train_step import print_table as print_train_table

        print(f"\n== training step (load before: {result['train']['load_before']})")
        print_train_table(result["train"])
    if "alfworld" in result:
        a = result["alfworld"]
        print(f"\n== ALFWorld (load before: {a['load_before']})")
        base = a["env_only"][0]["steps_per_s"]
        for r in a["env_only"]:
            print(f"{r['mode']:<40} {r['steps_per_s']:8.1f} steps/s  {r['steps_per_s'] / base:5.2f}x")
        base = a["with_llm"][0]["steps_per_s"]
        for r in a["with_llm"]:
            print(f"{r['episodes']} episodes + LLM ({r['engine']}), {r['workers']} worker(s){'':<8} {r['steps_per_s']:8.2f} "
                  f"steps/s  {r['steps_per_s'] / base:5.2f}x  (LLM {r['llm_seconds']:.1f} s of {r['seconds']:.1f} s)")
    if "gpu" in result:
        g = result["gpu"]
        print("\n== GPU")
        print(f"skipped: {g['skipped']}" if "skipped" in g else json.dumps(g, indent=1))
