"""Where one training step's time goes: the torch profiler over one sampling pass and one update, by kind of op.

    python -m onelayer.benchmarks.profile_step [--layers 15] [--out results/profile_step.json]
    python -m onelayer.benchmarks.profile_step --preset cpu-three-domains --domain code --layers 15

The same batch and settings as ``benchmarks/train_step.py`` (``onelayer train``'s defaults, or a sweep preset's
options for ``--domain``): the trainer samples once to warm up, then one sampling pass and one update run under
``torch.profiler``. Each op's self CPU time goes to one kind: matmuls (the only part the FLOP floor counts),
attention, KV-cache and other copies, elementwise ops (norms, rotary embeddings, activations, residual adds),
softmax and sampling, the optimizer, everything else. Next to each phase: its matmul FLOPs
(``train_step.sampling_flops`` / ``update_flops``) over the machine's measured fp32 matmul throughput (the
floor), and the matmul kind's achieved GFLOP/s. The phase's gap to the floor is then the matmuls' own inefficiency
(small row counts in decoding) plus every other kind's time. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch

from onelayer.benchmarks.machine import describe_machine
from onelayer.benchmarks.train_step import (
    _config,
    forwarded_tokens,
    matmul_gflops,
    sampling_flops,
    update_flops,
)

KINDS = ("matmul", "attention", "copies", "elementwise", "softmax/sampling", "optimizer", "other")

_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::addmv",
           "aten::mv", "aten::dot"}
_COPIES = {"aten::cat", "aten::index_select", "aten::index", "aten::copy_", "aten::clone", "aten::contiguous",
           "aten::index_put_", "aten::_index_put_impl_", "aten::slice_scatter", "aten::select_scatter",
           "aten::embedding", "aten::embedding_dense_backward", "aten::fill_", "aten::zero_", "aten::zeros",
           "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros_like", "aten::new_zeros"}
_SOFTMAX = {"aten::_log_softmax", "aten::log_softmax", "aten::_softmax", "aten::softmax", "aten::cumsum",
            "aten::cumsum_", "aten::searchsorted", "aten::argmax", "aten::gather", "aten::sort", "aten::isin",
            "aten::_log_softmax_backward_data", "aten::_softmax_backward_data", "aten::logsumexp", "aten::max",
            "aten::scatter", "aten::scatter_add_", "aten::scatter_add"}
_ELEMENTWISE = {"aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::div",
                "aten::div_", "aten::pow", "aten::sum", "aten::mean", "aten::rsqrt", "aten::sqrt", "aten::silu",
                "aten::silu_backward", "aten::neg", "aten::exp", "aten::log", "aten::where", "aten::masked_fill",
                "aten::masked_fill_", "aten::clamp", "aten::clamp_", "aten::clamp_min", "aten::maximum",
                "aten::minimum", "aten::sigmoid", "aten::tanh", "aten::cos", "aten::sin", "aten::eq", "aten::ne",
                "aten::gt", "aten::lt", "aten::ge", "aten::le", "aten::abs", "aten::reciprocal", "aten::lerp_",
                "aten::addcmul_", "aten::addcdiv_", "aten::sqrt_", "aten::mul_out", "aten::exp_", "aten::rsub"}


def kind_of(name: str) -> str:
    """The kind an op's self time is counted under (see the module docstring)."""
    if name in _MATMUL:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name.startswith("aten::_foreach") or name.startswith("Optimizer.") or name.startswith("aten::_fused_adam"):
        return "optimizer"
    if name in _COPIES:
        return "copies"
    if name in _SOFTMAX:
        return "softmax/sampling"
    if name in _ELEMENTWISE:
        return "elementwise"
    return "other"


def _profiled(fn) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    """Wall seconds of ``fn()`` under the profiler, self seconds per kind, and the ten largest ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    by_kind = dict.fromkeys(KINDS, 0.0)
    ops = []
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6
        if s <= 0:
            continue
        by_kind[kind_of(e.key)] += s
        ops.append((e.key, s))
    ops.sort(key=lambda x: -x[1])
    return wall, by_kind, ops[:10]


def measure(model_spec: str, layers: str, preset: str | None, domain: str, device: str) -> dict:
    from onelayer.training.rows import rows_from
    from onelayer.training.trainer import Trainer

    cfg = _config(model_spec, layers, 64, 20, device, preset, domain)
    shutil.rmtree(cfg.out, ignore_errors=True)
    trainer = Trainer(cfg)
    trajs = trainer.sample(1)  # warm-up (and the batch: the same seed gives the same one again)
    adv, _ = trainer.advantages(trajs)
    trainer.update(trajs, adv)  # warm-up of the update path (allocator, optimizer state)
    out: dict = {}
    holder: dict = {}
    wall, kinds, ops = _profiled(lambda: holder.update(trajs=trainer.sample(1)))
    rows = rows_from(holder["trajs"], adv)
    sampled = forwarded_tokens(rows, True, max(1, len(rows)), skip_silent=False)
    out["sampling"] = {"wall_s": wall, "by_kind_s": kinds, "top_ops": ops,
                       "flops": sampling_flops(trainer.model, *sampled), "tokens": sampled[0]}
    wall, kinds, ops = _profiled(lambda: trainer.update(trajs, adv))
    tokens, head_tokens = (cfg.num_iterations * n for n in forwarded_tokens(
        rows, cfg.share_prompts, cfg.micro_batch_size, skip_silent=cfg.beta == 0))
    out["update"] = {"wall_s": wall, "by_kind_s": kinds, "top_ops": ops,
                     "flops": update_flops(trainer.model, layers, tokens, head_tokens), "tokens": tokens}
    shutil.rmtree(cfg.out, ignore_errors=True)
    return out


def print_table(result: dict) -> None:
    """Per phase: wall seconds, the floor, and seconds and share per kind."""
    print(f"{'phase':9} {'wall s':>7} {'floor s':>7} {'mm GFLOP/s':>10}  " + "  ".join(f"{k:>16}" for k in KINDS))
    for phase in ("sampling", "update"):
        p = result["phases"][phase]
        cells = "  ".join(f"{p['by_kind_s'][k]:7.2f} ({p['by_kind_s'][k] / p['wall_s']:5.1%})" for k in KINDS)
        print(f"{phase:9} {p['wall_s']:7.2f} {p['floor_s']:7.2f} {p['matmul_gflops']:10.1f}  {cells}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="15")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="take this sweep preset's train options for --domain")
    ap.add_argument("--domain", default="math")
    ap.add_argument("--out", default="results/profile_step.json")
    args = ap.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    gflops = matmul_gflops()
    phases = measure(args.model, args.layers, args.preset, args.domain, args.device)
    for p in phases.values():
        p["floor_s"] = p["flops"] / (gflops * 1e9)
        p["matmul_gflops"] = p["flops"] / max(p["by_kind_s"]["matmul"], 1e-9) / 1e9
    result = {"command": "python -m onelayer.benchmarks.profile_step " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(), "model": args.model, "layers": args.layers, "preset": args.preset,
              "domain": args.domain if args.preset else "math", "matmul_gflops": gflops,
              "threads": torch.get_num_threads(), "load_before": load_before, "phases": phases}
    from onelayer.io import atomic_write_json

    atomic_write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
