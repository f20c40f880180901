"""ALFWorld learning study on CPU: one middle layer, GiGPO vs GRPO, several seeds, held-out games.

    python -m onelayer.benchmarks.alfworld_learning --out runs/alfworld-learning [--seeds 0,1,2] [--algos gigpo,grpo]

The easy setting (chosen so a 135M model gets a reward signal and one 20-step run
takes tens of minutes on 2 cores, not hours):

- games: generated offline, the ``easy`` set (``alfworld_gen.EASY_SETS``): pick-and-place
  and look-at-in-light tasks in rooms of 2 receptacles with 0-1 distractors (40 train
  games, 30 held-out eval games whose layouts the train set does not contain), under
  ``OUT/games/{train,eval}`` (the same files as the ``alfworld-gen-easy`` suite's);
- agent: the ``choice`` action format (numbered admissible actions, the model writes
  a number after an ``<action>`` prefix, 3 new tokens) or, with ``--action-format score``,
  the ``score`` format (a softmax over the model's likelihood of each admissible
  action's text; nothing generated), no history, 10 turns; a study directory holds
  one format (a rerun in another one is refused);
  "help", "look" and "inventory" are not listed (``hide_commands``);
- training: the middle layer, lr 1e-4 (``--lr``), 3 games x 4 samples per step, 20 steps;
- evaluation: greedy on the 30 held-out games, for every run at its last step
  (``eval/success_rate``) and for the base model once per seed: the eval lists each
  state's actions in an order drawn from the run's seed, and that order alone moves
  a greedy score, so a run is compared with the base model on its own seed's order;
  and (``--eval-samples K``, default 4) over K sampled passes at the training
  temperature (1.0) with sample seeds, and so action orders, that are the same for
  every run and the base model (30 x K episodes; ``OUT/runs/*/eval_sampled.json``,
  summary key ``eval_sampled``). The sampled score measures the policy RL trains:
  greedy, the default model answers "1" in nearly every state (its position
  preference, P(1) ~ 0.55), so its greedy score is that of the first action in a
  shuffled list, and a run's greedy score moves only once its argmax changes.

Every run is an ordinary run directory under ``OUT/runs`` (``base-sSEED``,
``ALGO-sSEED``); rerunning the command skips finished runs and resumes interrupted
ones. It prints a table and writes ``OUT/summary.json``: the base score per seed and
their mean, each run's held-out success, its gain over the same seed's base and its
training success (first and last 5 steps), and per algorithm the mean and sample
standard deviation over seeds of the score and of the gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from onelayer.benchmarks.contribution import bootstrap_mean_ci, paired_permutation_test
from onelayer.benchmarks.machine import describe_machine
from onelayer.envs.alfworld_gen import EASY_HIDDEN_COMMANDS
from onelayer.errors import UserError
from onelayer.io import atomic_write_json, read_jsonl

SETTINGS = dict(
    env="onelayer/ALFWorld-v0", action_format="choice", history_length=0, layers="middle", lr=1e-4,
    num_tasks=3, num_generations=4, max_turns=10, max_new_tokens=3, eval_size=30, eval_every=0,
    kl_metric=False, save_every=5,
)
# Commands that never change the world; left out of the numbered list (verl-agent drops "help"). With them
# listed, uniform random actions win 7.5% of these games within 10 turns; without, 20%.
HIDE_COMMANDS = list(EASY_HIDDEN_COMMANDS)


def _recipe(split: str) -> dict:
    """The generator arguments of ``split`` of the ``easy`` set (the alfworld-gen-easy suite plays the same games)."""
    from onelayer.envs.alfworld_gen import EASY_SETS

    return {k: v for k, v in EASY_SETS[split].items() if k != "exclude_splits"}


def ensure_games(root: Path) -> Path:
    """The study's train and held-out eval games under ``root`` (generated once; a set is written atomically)."""
    from onelayer.envs.alfworld_gen import MANIFEST, generate_games, read_signatures

    if not (root / "train" / MANIFEST).is_file():
        generate_games(root / "train", **_recipe("train"))
    if not (root / "eval" / MANIFEST).is_file():
        generate_games(root / "eval", exclude_signatures=read_signatures(root / "train"), **_recipe("eval"))
    return root


def _metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []


def final_eval(metrics: list[dict], steps: int) -> float | None:
    """The held-out success a run measured at step ``steps``, or None if it has not got there."""
    done = [m["eval/success_rate"] for m in metrics if m.get("step") == steps and "eval/success_rate" in m]
    return done[-1] if done else None


def run_one(out: Path, name: str, model: str, games: Path, steps: int, seed: int, algo: str,
            lr: float | None = None, action_format: str | None = None) -> list[dict]:
    """Train (or, with ``steps=0``, only evaluate) one run, resuming it when interrupted; its metrics."""
    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    run_dir = out / "runs" / name
    settings = {**SETTINGS, "lr": SETTINGS["lr"] if lr is None else lr,
                "action_format": action_format or SETTINGS["action_format"]}
    if (run_dir / "config.json").is_file():
        done = json.loads((run_dir / "config.json").read_text())["config"]
        if steps and done["lr"] != settings["lr"]:
            raise UserError(f"{run_dir} was trained with lr {done['lr']}, not {settings['lr']}: use another --out")
        if done["action_format"] != settings["action_format"]:
            raise UserError(f"{run_dir} was run in the {done['action_format']} action format, not "
                            f"{settings['action_format']}: use another --out")
    if final_eval(_metrics(run_dir), steps) is None:
        cfg = TrainConfig(model=model, algo=algo, steps=steps, seed=seed, eval_at_start=steps == 0,
                          env_kwargs={"data_path": str(games), "hide_commands": HIDE_COMMANDS}, out=str(run_dir),
                          **settings)
        resume = (run_dir / "config.json").is_file()
        print(f"{'resuming' if resume else 'running'} {name}", file=sys.stderr, flush=True)
        Trainer(cfg, resume=resume).train(progress=sys.stderr.isatty())
    return _metrics(run_dir)


def _spread(scores: list[float], gains: list[float]) -> dict:
    """Mean and sample sd over seeds of the scores and of their gains over the base model."""
    return {"seeds": len(scores), "mean": statistics.fmean(scores) if scores else None,
            "sd": statistics.stdev(scores) if len(scores) > 1 else None,
            "gain_mean": statistics.fmean(gains) if gains else None,
            "gain_sd": statistics.stdev(gains) if len(gains) > 1 else None}


def eval_sampled(run_dir: Path, games: Path, samples: int) -> dict:
    """A run's (or the base model's) held-out success over ``samples`` passes sampled at T=1 (the runs'). The
    sample seeds (and so the action orders) are the alfworld-gen-easy-sampled suite's, the same for every run, so every
    run is compared with the base model on identical seeds. Kept in ``RUN/eval_sampled.json``: a rerun reuses it, and a
    larger ``samples`` adds only the missing passes."""
    from onelayer.agents.engine import HFEngine
    from onelayer.benchmarks.evaluate import load_run_model, read_run_train_config
    from onelayer.benchmarks.suites import extension_mismatch, get_suite, merge_samples, run_suite

    path = run_dir / "eval_sampled.json"
    done = json.loads(path.read_text()) if path.is_file() else None
    have = done["settings"]["num_samples"] if done else 0
    if have == samples:
        return done
    suite = get_suite("alfworld-gen-easy-sampled").with_overrides(
        env_kwargs={"split": "eval", "data_path": str(games), "hide_commands": HIDE_COMMANDS}, num_items=SETTINGS["eval_size"],
        max_new_tokens=SETTINGS["max_new_tokens"], max_turns=SETTINGS["max_turns"])
    differ = extension_mismatch(done, suite) if done is not None else []
    if have > samples:  # fewer passes than stored: start over so every model has the same passes
        done, have = None, 0
    elif differ:
        print(f"{path} was evaluated otherwise ({', '.join(differ)} differ): starting over", file=sys.stderr, flush=True)
        done, have = None, 0
    suite = suite.with_overrides(num_samples=samples - have)
    config = read_run_train_config(run_dir)
    model, tok, _ = load_run_model(run_dir, config=config)
    print(f"evaluating {run_dir.name}: sampled passes {have}..{samples - 1}", file=sys.stderr, flush=True)
    res = run_suite(suite, HFEngine(model, tok, max_batch_size=config.rollout_batch_size), tok,
                    history_length=config.history_length, action_format=config.action_format, first_sample=have)
    if done is not None:  # add the new passes to the stored ones (pass j always has the same seed)
        res = merge_samples(done, res)
    atomic_write_json(path, res)
    return res


def _success_by_game(res: dict) -> dict[str, float]:
    return {str(it["task_id"]): statistics.fmean(float(x["success"]) for x in it["samples"]) for it in res["items"]}


def paired_by_game(run: dict, base: dict, name: str = "the run") -> dict:
    """A run's sampled gain over the base model paired by held-out game: each game's success over the passes
    minus the base's on the same game and seeds; the mean over games, its 95% bootstrap CI over games, and the
    two-sided p of the paired sign-flip permutation test."""
    mine, theirs = _success_by_game(run), _success_by_game(base)
    if mine.keys() != theirs.keys():
        raise UserError(f"{name} and the base model were evaluated on different games ({len(mine)} vs "
                        f"{len(theirs)}): delete the stale runs/*/eval_sampled.json (the run's or the base's) "
                        f"and rerun to evaluate it again")
    x, y = [mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(mine)]
    gain, low, high = bootstrap_mean_ci([a - b for a, b in zip(x, y)])
    return {"games": len(x), "gain": gain, "ci95": [low, high], "p_permutation": paired_permutation_test(x, y),
            "games_up": sum(a > b for a, b in zip(x, y)), "games_down": sum(a < b for a, b in zip(x, y))}


def summarize_sampled(base: dict, runs: dict[str, dict[int, dict]]) -> dict:
    """Per run and per algorithm (mean, sample sd over seeds): sampled held-out success and its gain over the base
    model on the same sample seeds."""
    out = {"samples": base["settings"]["num_samples"], "temperature": base["settings"]["temperature"],
           "base": base["success_rate"], "base_by_sample": base["by_sample"], "runs": {}, "algos": {}}
    for algo, by_seed in runs.items():
        scores = [r["success_rate"] for _, r in sorted(by_seed.items())]
        for seed, r in sorted(by_seed.items()):
            out["runs"][f"{algo}-s{seed}"] = {"success_rate": r["success_rate"], "by_sample": r["by_sample"],
                                              "gain": r["success_rate"] - base["success_rate"],
                                              "paired": paired_by_game(r, base, f"{algo}-s{seed}")}
        out["algos"][algo] = _spread(scores, [v - base["success_rate"] for v in scores])
    return out


def summarize(bases: dict[int, list[dict]], runs: dict[str, dict[int, list[dict]]], steps: int) -> dict:
    """Held-out success per run, its gain over the base model on the same seed's eval, and per algorithm
    the mean and sample sd over seeds of both; plus training success (first and last 5 steps)."""
    base_scores = {seed: metrics[-1]["eval/success_rate"] for seed, metrics in sorted(bases.items())}
    out = {"base": {"eval_success_rate": statistics.fmean(base_scores.values()),
                    "by_seed": {str(seed): v for seed, v in base_scores.items()}}, "runs": {}, "algos": {}}
    for algo, by_seed in runs.items():
        scores, gains = [], []
        for seed, metrics in sorted(by_seed.items()):
            train = [m["success_rate"] for m in metrics if "success_rate" in m]
            final = final_eval(metrics, steps)
            gain = None if final is None else final - base_scores[seed]
            rec = {"algo": algo, "seed": seed, "eval_success_rate": final, "base_eval_success_rate": base_scores[seed],
                   "gain": gain,
                   "train_success_first5": statistics.fmean(train[:5]) if train else None,
                   "train_success_last5": statistics.fmean(train[-5:]) if train else None,
                   "train_time_s": sum(m.get("time/sampling_s", 0) + m.get("time/training_s", 0) for m in metrics)}
            out["runs"][f"{algo}-s{seed}"] = rec
            if final is not None:
                scores.append(final)
                gains.append(gain)
        out["algos"][algo] = _spread(scores, gains)
    return out


def _fmt(v: float | None, sign: str = "") -> str:
    return "-" if v is None else f"{v:{sign}.3f}"


def print_table(summary: dict) -> None:
    print("| run | held-out success (greedy, 30 games) | base, same eval order | gain | "
          "train success, steps 1-5 | last 5 steps | train time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed, v in summary["base"]["by_seed"].items():
        print(f"| base-s{seed} | {v:.3f} | | | | | |")
    for name, r in summary["runs"].items():
        print(f"| {name} | {_fmt(r['eval_success_rate'])} | {_fmt(r['base_eval_success_rate'])} | "
              f"{_fmt(r['gain'], '+')} | {_fmt(r['train_success_first5'])} | {_fmt(r['train_success_last5'])} | "
              f"{r['train_time_s']:.0f} |")
    _print_algos(summary["algos"])
    sampled = summary.get("eval_sampled")
    if sampled:
        print(f"\nheld-out success over {sampled['samples']} passes sampled at T={sampled['temperature']:g} (the same "
              f"seeds for every run): base {sampled['base']:.3f}")
        for name, r in sampled["runs"].items():
            pr = r.get("paired")
            paired = "" if pr is None else (
                f"; paired over {pr['games']} games: CI [{pr['ci95'][0]:+.3f}, {pr['ci95'][1]:+.3f}], "
                f"permutation p = {pr['p_permutation']:.4f}, {pr['games_up']} games up / {pr['games_down']} down")
            print(f"{name}: {r['success_rate']:.3f} (gain {r['gain']:+.3f}{paired})")
        _print_algos(sampled["algos"])


def _print_algos(algos: dict) -> None:
    for algo, a in algos.items():
        sd = "" if a["sd"] is None else f" ± {a['sd']:.3f}"
        gsd = "" if a["gain_sd"] is None else f" ± {a['gain_sd']:.3f}"
        print(f"{algo}: {_fmt(a['mean'])}{sd}, gain over base {_fmt(a['gain_mean'], '+')}{gsd} "
              f"over {a['seeds']} seed(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Study directory (games, runs, summary.json); rerun to resume.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--algos", default="gigpo,grpo")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=SETTINGS["lr"], help="Learning rate of the trained layer.")
    p.add_argument("--action-format", default=SETTINGS["action_format"], choices=["choice", "score"],
                   help="choice: the model writes an action's number; score: a softmax over the model's likelihood of "
                        "each admissible action's text (agents.scoring).")
    p.add_argument("--eval-samples", type=int, default=4,
                   help="Also score the base model and every run over this many passes sampled at T=1 with the "
                        "same seeds for all (0: only the trainer's greedy eval).")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        algos = [a.strip() for a in args.algos.split(",") if a.strip()]
        if args.steps < 1 or not seeds or not algos or not args.lr > 0 or args.eval_samples < 0:
            raise ValueError
    except ValueError:
        print(f"error: --seeds must list integers, --algos names, --steps be >= 1, --lr > 0 and --eval-samples >= 0 "
              f"(got {args.seeds!r}, {args.algos!r}, {args.steps}, {args.lr}, {args.eval_samples})", file=sys.stderr)
        return 2
    t = time.time()
    try:
        games = ensure_games(args.out / "games")
        # The held-out eval lists each state's actions in an order drawn from the run's seed, so the base model
        # is evaluated once per seed and every run is compared with the base on its own seed's order.
        bases, runs = {}, {a: {} for a in algos}
        for s in seeds:  # seed-major, so an interrupted study already compares the algorithms
            bases[s] = run_one(args.out, f"base-s{s}", args.model, games, 0, s, algos[0],
                               action_format=args.action_format)
            for a in algos:
                runs[a][s] = run_one(args.out, f"{a}-s{s}", args.model, games, args.steps, s, a, args.lr,
                                     args.action_format)
        sampled = None
        if args.eval_samples:
            base = eval_sampled(args.out / "runs" / f"base-s{seeds[0]}", games, args.eval_samples)
            sampled = summarize_sampled(base, {a: {s: eval_sampled(args.out / "runs" / f"{a}-s{s}", games,
                                                                   args.eval_samples) for s in seeds} for a in algos})
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(bases, runs, args.steps)
    summary["eval_sampled"] = sampled
    summary.update(settings={**SETTINGS, "lr": args.lr, "action_format": args.action_format, "hide_commands": HIDE_COMMANDS, "steps": args.steps, "model": args.model,
                             "games": {"train": _recipe("train"), "eval": _recipe("eval")}},
                   command=" ".join(["python -m onelayer.benchmarks.alfworld_learning", *(argv or sys.argv[1:])]),
                   machine=describe_machine(), wall_s=time.time() - t)
    atomic_write_json(args.out / "summary.json", summary)
    print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
