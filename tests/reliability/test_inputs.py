"""Every bad input is caught before work starts: exit code 2, one line naming the bad value and the fix, no traceback.

The table runs the real `onelayer` command (typer's CliRunner on ``onelayer.cli.app``,
in-process so the ~80 cases stay fast). ``{model}`` is a tiny random-init model
directory; cases that need the model's layer count or tokenizer load it.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from onelayer.cli import app

MODEL = "{model}"
TRAIN = ["train", "--model", MODEL, "--num-tasks", "2", "--num-generations", "4", "--quiet"]
CODE = ["--env", "onelayer/Code-v0"]

# (id, args, needles that must all be in the one error line)
CASES = [
    # env, algorithm, layers
    ("unknown env id", TRAIN + ["--env", "onelayer/Nope-v0"], ["'onelayer/Nope-v0'", "onelayer/Math-v0"]),
    ("env id without namespace", TRAIN + ["--env", "Math-v0"], ["'Math-v0'", "onelayer/Math-v0"]),
    ("unknown algo", TRAIN + ["--algo", "ppo"], ["'ppo'", "gigpo, grpo, drgrpo"]),
    ("layer spec 1-", TRAIN + ["--layers", "1-"], ["'1-'", "12-16"]),
    ("layer spec abc", TRAIN + ["--layers", "abc"], ["'abc'", "middle"]),
    ("layer spec 3..5", TRAIN + ["--layers", "3..5"], ["'3..5'", "15.mlp"]),
    ("layer spec 1.", TRAIN + ["--layers", "1."], ["'1.'", "15.mlp"]),
    ("layer spec empty item", TRAIN + ["--layers", "1,,2"], ["'1,,2'", "empty item"]),
    ("layer spec empty", TRAIN + ["--layers", ""], ["empty layer spec", "--layers 15"]),
    ("layer spec mid:x", TRAIN + ["--layers", "mid:x"], ["'mid:x'", "mid:4"]),
    ("layer spec bad regex", TRAIN + ["--layers", "re:("], ["'re:('", "regular expression"]),
    ("layer out of range", TRAIN + ["--layers", "12"], ["layer 12", "0..3"]),
    ("negative layer out of range", TRAIN + ["--layers", "-5"], ["layer -5", "-4..-1"]),
    ("range past the end", TRAIN + ["--layers", "1-9"], ["layer 9", "0..3"]),
    ("unknown sub-module", TRAIN + ["--layers", "1.nope"], ["'nope'", "mlp"]),
    ("unknown also_train", TRAIN + ["--also-train", "head"], ["'head'", "lm_head"]),
    # model
    ("missing model dir", ["train", "--model", "/no/such/dir"], ["/no/such/dir", "does not exist"]),
    ("missing gguf file", ["train", "--model", "/no/such/m.gguf"], ["/no/such/m.gguf", "does not exist"]),
    ("model dir without config.json", ["train", "--model", "{empty}"], ["has no config.json", "save_pretrained"]),
    ("unknown model name", ["train", "--model", "notamodel"], ["'notamodel'", "smollm2-135m"]),
    # env options and datasets
    ("math dataset path missing", TRAIN + ["--env-kwargs", "source=/no/such/data.jsonl"], ["/no/such/data.jsonl", "does not exist"]),
    ("math dataset not JSON", TRAIN + ["--env-kwargs", "source={badjson}"], ["bad.jsonl:2", "not valid JSON"]),
    ("math dataset wrong fields", TRAIN + ["--env-kwargs", "source={nofield}"], ["'question'", "['q']"]),
    ("code dataset path missing", TRAIN + CODE + ["--env-kwargs", "dataset=/no/such/code.jsonl"], ["/no/such/code.jsonl", "not found"]),
    ("code dataset not JSON", TRAIN + CODE + ["--env-kwargs", "dataset={badjson}"], ["bad.jsonl:2", "not valid JSON"]),
    ("code timeout not a number", TRAIN + CODE + ["--env-kwargs", "timeout_s=abc"], ["timeout_s", "'abc'"]),
    ("alfworld data path missing", TRAIN + ["--env", "onelayer/ALFWorld-v0", "--env-kwargs", "data_path=/no/such/games"],
     ["/no/such/games", "alfworld generate"]),
    ("math level out of range", TRAIN + ["--env-kwargs", "level=9"], ["level 9", "1, 2, 3, 4, 5"]),
    ("math level not a number", TRAIN + ["--env-kwargs", "level=abc"], ["level", "'abc'"]),
    ("unknown env option", TRAIN + ["--env-kwargs", "nope=1"], ["'nope'", "onelayer/Math-v0"]),
    ("env kwargs not key=value", TRAIN + ["--env-kwargs", "notkv"], ["'notkv'", "key=value"]),
    # batch shape and lengths
    ("group size 1", TRAIN + ["--num-generations", "1"], ["num_generations", "got 1", "at least 2"]),
    ("mini batch does not divide", TRAIN + ["--mini-batch-size", "3"], ["mini_batch_size 3", "= 8"]),
    ("max prompt length below the prompt", TRAIN + ["--max-prompt-length", "8"], ["max_prompt_length 8", "--max-prompt-length"]),
    ("zero tasks", TRAIN + ["--num-tasks", "0"], ["num_tasks", "got 0"]),
    ("negative steps", TRAIN + ["--steps", "-1"], ["steps", "got -1"]),
    ("steps not an integer", TRAIN + ["--steps", "ten"], ["--steps", "'ten'"]),
    ("lr zero", TRAIN + ["--lr", "0"], ["lr", "got 0.0"]),
    ("lr negative", TRAIN + ["--lr", "-1"], ["lr", "got -1.0"]),
    ("lr nan", TRAIN + ["--lr", "nan"], ["lr", "got nan"]),
    ("lr not a number", TRAIN + ["--lr", "abc"], ["--lr", "'abc'"]),
    ("greedy training", TRAIN + ["--temperature", "0"], ["temperature 0", "> 0"]),
    ("top_p above 1", TRAIN + ["--top-p", "2"], ["top_p", "2.0"]),
    ("max_turns zero", TRAIN + ["--max-turns", "0"], ["max_turns", "got 0"]),
    ("unknown loss_agg", TRAIN + ["--loss-agg", "x"], ["'x'", "token-mean"]),
    ("unknown engine", TRAIN + ["--engine", "nope"], ["'nope'", "hf"]),
    ("unknown report sink", TRAIN + ["--report-to", "nope"], ["'nope'", "tensorboard"]),
    ("reward func without colon", TRAIN + ["--reward-funcs", "nomodule"], ["'nomodule'", "module:function"]),
    ("reward func not importable", TRAIN + ["--reward-funcs", "no_such_mod:f"], ["'no_such_mod:f'", "No module"]),
    ("unknown device", TRAIN + ["--device", "tpu"], ["'tpu'", "cuda:N"]),
    ("unknown dtype", TRAIN + ["--dtype", "float8"], ["'float8'", "bfloat16"]),
    ("unknown flag", TRAIN + ["--bogus"], ["--bogus", "--help"]),
    ("resume without a run", TRAIN + ["--resume"], ["cannot resume", "without --resume"]),
    # config files
    ("config file missing", ["train", "--config", "/no/such.yaml"], ["/no/such.yaml", "does not exist"]),
    ("config malformed YAML", ["train", "--config", "{cfg:bad.yaml:steps: [1,\n}"], ["bad.yaml", "cannot parse"]),
    ("config malformed JSON", ["train", "--config", "{cfg:bad.json:{steps}"], ["bad.json", "cannot parse"]),
    ("config not a mapping", ["train", "--config", "{cfg:list.yaml:- a\n- b\n}"], ["list.yaml", "mapping"]),
    ("config unknown key", ["train", "--config", "{cfg:unk.yaml:stepz: 3\n}"], ["stepz", "valid options"]),
    ("config steps wrong type", ["train", "--config", "{cfg:t1.yaml:steps: ten\n}"], ["steps", "'ten'", "integer"]),
    ("config lr wrong type", ["train", "--config", "{cfg:t2.yaml:lr: abc\n}"], ["lr", "'abc'", "number"]),
    ("config list for int", ["train", "--config", "{cfg:t3.yaml:num_generations: [4]\n}"], ["num_generations", "[4]"]),
    ("config env_kwargs not a mapping", ["train", "--config", "{cfg:t4.yaml:env_kwargs: 3\n}"], ["env_kwargs", "mapping"]),
    ("config bool wrong type", ["train", "--config", "{cfg:t5.yaml:kl_metric: 3\n}"], ["kl_metric", "true or false"]),
    # eval
    ("eval missing run dir", ["eval", "--run", "/no/such/run"], ["/no/such/run", "not a onelayer run directory"]),
    ("eval missing model", ["eval", "--model", "/no/such/model"], ["/no/such/model", "does not exist"]),
    ("eval unknown env id", ["eval", "--model", MODEL, "--env", "onelayer/Nope-v0"], ["'onelayer/Nope-v0'"]),
    ("eval run and model", ["eval", "--run", "/tmp", "--model", MODEL], ["exactly one of"]),
    ("eval num items zero", ["eval", "--model", MODEL, "--num-items", "0"], ["--num-items", "got 0"]),
    ("eval num items not a number", ["eval", "--model", MODEL, "--num-items", "x"], ["--num-items", "'x'"]),
    ("eval max new tokens zero", ["eval", "--model", MODEL, "--max-new-tokens", "0"], ["--max-new-tokens", "got 0"]),
    ("eval batch size zero", ["eval", "--model", MODEL, "--batch-size", "0"], ["--batch-size", "got 0"]),
    ("eval negative temperature", ["eval", "--model", MODEL, "--temperature", "-1"], ["--temperature", "-1"]),
    ("eval dataset path missing", ["eval", "--model", MODEL, "--env-kwargs", "source=/no/such.jsonl"], ["/no/such.jsonl"]),
    ("eval unknown device", ["eval", "--model", MODEL, "--device", "tpu"], ["'tpu'"]),
    # export
    ("export missing run dir", ["export", "/no/such/run", "--out", "{tmp}/exp"], ["/no/such/run", "does not exist", "onelayer train"]),
    ("export without run dir", ["export"], ["run_dir", "--help"]),
    # envs check
    ("envs check unknown id", ["envs", "check", "onelayer/Nope-v0"], ["'onelayer/Nope-v0'", "module:Class"]),
    ("envs check bad module", ["envs", "check", "nomodule:Cls"], ["'nomodule'"]),
    ("envs check bad env option", ["envs", "check", "onelayer/Math-v0", "--env-kwargs", "level=9"], ["level 9"]),
    ("envs check unknown env option", ["envs", "check", "onelayer/Math-v0", "--env-kwargs", "nope=1"], ["'nope'"]),
    ("envs check zero steps", ["envs", "check", "onelayer/Math-v0", "--max-steps", "0"], ["--max-steps", "got 0"]),
    # alfworld generate
    ("generate zero games", ["alfworld", "generate", "--out", "{tmp}/g", "--n", "0"], ["n must be >= 1", "got 0"]),
    ("generate unknown task type", ["alfworld", "generate", "--out", "{tmp}/g", "--n", "2", "--task-types", "9"], ["'9'", "pick_and_place_simple"]),
    ("generate bad receptacles", ["alfworld", "generate", "--out", "{tmp}/g", "--n", "2", "--min-receptacles", "5",
                                  "--max-receptacles", "2"], ["min (5)", "max (2)"]),
    ("generate into a non-empty dir", ["alfworld", "generate", "--out", MODEL, "--n", "2"], ["not empty", "--overwrite"]),
]

_PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar (eval loads weights with one): not a message


def _fill(arg: str, tmp_path, model_dir) -> str:
    m = re.fullmatch(r"\{cfg:([^:]+):(.*)\}", arg, re.S)
    if m:
        p = tmp_path / m.group(1)
        p.write_text(m.group(2))
        return str(p)
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n{not json\n')
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"q": 1}\n')
    return (arg.replace(MODEL, str(model_dir)).replace("{empty}", str(empty)).replace("{badjson}", str(bad))
            .replace("{nofield}", str(nofield)).replace("{tmp}", str(tmp_path)))


@pytest.mark.parametrize("args,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_naming_the_value(args, needles, tiny_model_dirs, tmp_path):
    args = [_fill(a, tmp_path, tiny_model_dirs["qwen3"]) for a in args]
    if args[0] == "train" and "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not _PROGRESS.search(ln)]
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an uncaught error
    assert "Traceback" not in r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:  # click spells an argument's name by version (run_dir / RUN_DIR)
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    if args[0] == "train":  # nothing of a run was written: fixing the input and rerunning just works
        assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_yaml_numbers_in_e_notation_are_numbers_not_errors(tmp_path):
    """PyYAML reads `lr: 3e-5` as the string '3e-5'; the config must still hold the float."""
    from onelayer.cli import _config_from_flags

    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 3e-5\nsteps: '4'\nkl_metric: 'no'\nlayers: 2\n")
    c = _config_from_flags(cfg, {})
    assert c.lr == 3e-5 and c.steps == 4 and c.kl_metric is False and c.layers == "2"
    c.validate()


def test_the_installed_command_prints_usage_errors_on_one_line_too():
    """Through the real console entry point (rich help formatting and all), not only the test runner."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "onelayer.cli", "train", "--steps", "ten"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "'ten'" in r.stderr and "--steps" in r.stderr
