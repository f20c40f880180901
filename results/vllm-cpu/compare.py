"""The stored runs of results/vllm-cpu/ (``seed<N>/vllm`` and ``seed<N>/hf``) side by side, as markdown.

Per seed: the reward of each step and the final accuracy. Per engine: the mean and the seed-to-seed spread of
those figures. Then whether the engines' means differ by more than that spread allows: a difference counts as
within seed noise when it is below two standard errors of a difference of two means over the seeds
(``2 * sqrt(sd_vllm**2 / n + sd_hf**2 / n)``, sample standard deviations over seeds; a rough bound for few
seeds). Last, every logged metric per step for every run.

    python results/vllm-cpu/compare.py results/vllm-cpu > results/vllm-cpu/comparison.md
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("vllm", "hf")
PER_STEP = [("reward", "{:.3f}"), ("success_rate", "{:.3f}"), ("response_length", "{:.1f}"),
            ("time/sampling_s", "{:.1f}"), ("time/training_s", "{:.1f}"), ("sync/bytes", "{:,.0f}"),
            ("time/sync_s", "{:.3f}"), ("logprob_mismatch_mean", "{:.2e}"), ("logprob_mismatch_max", "{:.2e}"),
            ("logprob_mismatch_tokens", "{:.0f}")]
# Config fields that may differ between the compared runs; any other difference is reported.
VARIED = {"seed", "engine", "out"}


@dataclass
class Run:
    """One stored run: its seed, engine, the metrics row of each training step and the final eval accuracy."""

    seed: int
    engine: str
    steps: list[dict]
    accuracy: float
    config: dict

    @property
    def rewards(self) -> list[float]:
        return [row["reward"] for row in self.steps]


def load_runs(root: Path) -> list[Run]:
    """Every ``seed<N>/<engine>`` run under ``root``, by seed then engine; each seed must have both engines."""
    runs = []
    for seed_dir in sorted(root.glob("seed*"), key=lambda p: int(re.sub(r"\D", "", p.name) or -1)):
        if not re.fullmatch(r"seed\d+", seed_dir.name):
            continue
        for engine in ENGINES:
            run = seed_dir / engine
            if not (run / "metrics.jsonl").is_file():
                raise SystemExit(f"error: {run} has no metrics.jsonl: every seed needs both engines "
                                 "(bash results/vllm-cpu/run.sh regenerates them)")
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            accuracy = json.loads((run / "eval.json").read_text())["accuracy"]
            config = json.loads((run / "config.json").read_text())["config"]
            runs.append(Run(int(seed_dir.name[4:]), engine, [r for r in rows if "reward" in r], accuracy, config))
    if not runs:
        raise SystemExit(f"error: no seed<N>/<engine> runs under {root}: bash results/vllm-cpu/run.sh")
    return runs


def figures(run: Run) -> dict[str, float]:
    """The figures compared across seeds and engines."""
    return {"mean reward (all steps)": statistics.fmean(run.rewards), "last-step reward": run.rewards[-1],
            "final accuracy": run.accuracy}


def config_differences(runs: list[Run]) -> list[str]:
    """Config fields, other than seed, engine and out, whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.config} - VARIED)
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]


def main(root: str) -> None:
    runs = load_runs(Path(root))
    seeds = sorted({r.seed for r in runs})
    n_steps = max(len(r.steps) for r in runs)
    by_engine = {e: [r for r in runs if r.engine == e] for e in ENGINES}

    print(f"3-step GRPO runs of layer 15 on math, seeds {', '.join(map(str, seeds))}, `--engine vllm` and "
          "`--engine hf` (`bash results/vllm-cpu/run.sh`). The engines sample differently from the same seed, "
          "so a seed's two runs see different rollouts.\n")
    diffs = config_differences(runs)
    print("Configs: identical except seed, engine and out." if not diffs else
          f"Configs differ, beyond seed, engine and out, in: {', '.join(diffs)}.")

    print("\n## Per seed\n")
    steps = " | ".join(f"reward step {i + 1}" for i in range(n_steps))
    print(f"| seed | engine | {steps} | mean reward | final accuracy |")
    print("| --- | --- | " + " | ".join("---" for _ in range(n_steps + 2)) + " |")
    for r in runs:
        cells = [f"{x:.3f}" for x in r.rewards] + ["—"] * (n_steps - len(r.rewards))
        print(f"| {r.seed} | {r.engine} | " + " | ".join(cells) + f" | {statistics.fmean(r.rewards):.3f} | "
              f"{r.accuracy:.4f} |")

    print("\n## Per engine, over seeds\n")
    print("| figure | engine | seeds | mean | sd over seeds | min – max |")
    print("| --- | --- | --- | --- | --- | --- |")
    names = list(figures(runs[0]))
    values = {(e, f): [figures(r)[f] for r in by_engine[e]] for e in ENGINES for f in names}
    for f in names:
        for e in ENGINES:
            v = values[e, f]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            print(f"| {f} | {e} | {len(v)} | {statistics.fmean(v):.4f} | {sd:.4f} | {min(v):.4f} – {max(v):.4f} |")

    print("\n## vllm against hf\n")
    if len(seeds) < 2:
        print("One seed: no seed-to-seed spread to compare the engines' difference with.")
    else:
        print("| figure | vllm − hf (means) | largest seed-to-seed range within an engine | 2 standard errors "
              "of the difference | within seed noise |")
        print("| --- | --- | --- | --- | --- |")
        verdicts = {}
        for f in names:
            v, h = values["vllm", f], values["hf", f]
            diff = statistics.fmean(v) - statistics.fmean(h)
            bound = 2 * (statistics.variance(v) / len(v) + statistics.variance(h) / len(h)) ** 0.5
            spread = max(max(v) - min(v), max(h) - min(h))
            verdicts[f] = abs(diff) <= bound
            print(f"| {f} | {diff:+.4f} | {spread:.4f} | {bound:.4f} | {'yes' if verdicts[f] else 'no'} |")
        inside = [f for f in names if verdicts[f]]
        outside = [f for f in names if not verdicts[f]]
        print(f"\nOver {len(seeds)} seeds, " + (
            "every vllm − hf difference is within the seed-to-seed spread (below two standard errors)." if not outside
            else f"within the seed-to-seed spread: {', '.join(inside) or 'none'}; larger than it: "
                 f"{', '.join(outside)}."))

    print("\n## Every step\n")
    print("The time/ figures come from a shared 2-core machine under other load: they are not timings.\n")
    header = " | ".join(f"seed {r.seed} {r.engine}" for r in runs)
    print(f"| metric | step | {header} |")
    print("| --- | --- | " + " | ".join("---" for _ in runs) + " |")
    for key, fmt in PER_STEP:
        for i in range(n_steps):
            cells = ["—" if i >= len(r.steps) or r.steps[i].get(key) is None else fmt.format(r.steps[i][key])
                     for r in runs]
            print(f"| {key} | {i + 1} | " + " | ".join(cells) + " |")
    print("| final eval accuracy | end | " + " | ".join(f"{r.accuracy:.4f}" for r in runs) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
