"""ALFWorld env steps per second: one env in this process, then ``ALFWorldVecEnv`` with 1 and N workers.

    python -m onelayer.benchmarks.alfworld_steps [--data-path DIR] [--num-envs 16] [--workers 1,2] [--steps 1500]

Every configuration plays the same episodes with uniformly random admissible
actions (a fixed seed): ``num_envs`` episodes are live at once; a finished
episode is reset on the next game. Counted: ``step`` calls per wall-clock
second (resets, which load a game, are in the time but not in the count).
"speedup" is relative to the same ``num_envs`` stepped in this process.
Prints a table and writes JSON (default ``results/alfworld_steps.json``)
with the machine. Note: on a machine whose cores are busy with other work the
worker rows cannot scale; check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from onelayer.benchmarks.machine import describe_machine
from onelayer.io import atomic_write_json


def run(num_envs: int, num_workers: int | None, steps: int, env_kwargs: dict, seed: int = 0) -> dict:
    """Random admissible actions on ``num_envs`` envs until ``steps`` steps; ``num_workers=None``: plain in-process envs."""
    from onelayer.envs.alfworld_vec import ALFWorldVecEnv

    rng = random.Random(seed)
    t0 = time.perf_counter()
    vec = ALFWorldVecEnv(num_envs, num_workers=num_workers or 0, env_kwargs=env_kwargs)
    startup = time.perf_counter() - t0
    n_tasks = vec.num_tasks
    next_task = 0

    def tasks(k):
        nonlocal next_task
        out = [{"task_id": (next_task + j) % n_tasks} for j in range(k)]
        next_task += k
        return out

    try:
        t0 = time.perf_counter()
        _, infos = vec.reset(options=tasks(num_envs))
        done_steps, episodes = 0, 0
        while done_steps < steps:
            actions = [rng.choice(info["admissible_actions"]) for info in infos]
            _, _, term, trunc, infos = vec.step(actions)
            done_steps += num_envs
            ended = [i for i in range(num_envs) if term[i] or trunc[i]]
            if ended:
                episodes += len(ended)
                _, new_infos = vec.reset(options=tasks(len(ended)), indices=ended)
                for i, info in zip(ended, new_infos):
                    infos[i] = info
        elapsed = time.perf_counter() - t0
    finally:
        vec.close()
    return {"num_envs": num_envs, "num_workers": num_workers or 0, "steps": done_steps, "seconds": elapsed,
            "steps_per_s": done_steps / elapsed, "startup_s": startup, "episodes_finished": episodes}


def main(argv=None) -> int:
    """Run the configurations, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", default=None, help="folder of games (default: the env's default train split)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1 and os.cpu_count())")
    p.add_argument("--steps", type=int, default=1600, help="env steps per configuration")
    p.add_argument("--out", default="results/alfworld_steps.json")
    a = p.parse_args(argv)
    workers = [int(w) for w in a.workers.split(",")] if a.workers else sorted({1, os.cpu_count() or 1})
    env_kwargs = {"data_path": a.data_path} if a.data_path else {}
    rows = [dict(run(1, None, max(a.steps // 4, 200), env_kwargs), mode="1 env, in-process")]
    rows.append(dict(run(a.num_envs, None, a.steps, env_kwargs), mode=f"{a.num_envs} envs, in-process"))
    for w in workers:
        rows.append(dict(run(a.num_envs, w, a.steps, env_kwargs), mode=f"{a.num_envs} envs, {w} worker(s)"))
    base = rows[1]["steps_per_s"]
    print(f"{'configuration':<28} {'steps/s':>9} {'speedup':>8} {'startup s':>10} {'episodes':>9}")
    for r in rows:
        r["speedup_vs_in_process"] = r["steps_per_s"] / base
        print(f"{r['mode']:<28} {r['steps_per_s']:>9.1f} {r['speedup_vs_in_process']:>7.2f}x "
              f"{r['startup_s']:>10.2f} {r['episodes_finished']:>9}")
    from onelayer.envs.alfworld_vec import resolve_data_path

    result = {"machine": describe_machine(("alfworld", "textworld", "fast-downward-textworld")), "data_path": str(resolve_data_path(a.data_path, "train")), "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
