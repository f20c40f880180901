"""Layer-aware selections (mid:K, top:K@SWEEP, bottom:K@SWEEP) and per-layer learning rates (Boost-Bk)."""

import json
import math
import shutil

import pytest
import torch
from test_trainer import _load, tiny_config

from onelayer.benchmarks.sweep_results import JobResult, append_result, write_ranking
from onelayer.errors import UserError
from onelayer.training.layers import parse_layer_spec, rank_layers, resolve_ranked_spec
from onelayer.training.optim import parse_layer_lr
from onelayer.training.trainer import Trainer

# Math: base 0.40, full 0.60, so C_l = (S_l - 0.40) / 0.20.
# Contributions by layer: 0: 0.5, 1: 0.9, 2: 0.8, 3: 0.9, i.e. layers 1 and 3 tie for best, 0 is the worst.
MATH_LAYER_SCORES = {3: 0.58, 0: 0.50, 2: 0.56, 1: 0.58}  # rows written out of index order on purpose
# Code ranks the other way round: layer 0 best (C = 1.0), then 2, 1, 3.
CODE_LAYER_SCORES = {0: 0.30, 1: 0.15, 2: 0.25, 3: 0.12}


def _row(domain, method, target, score, layer=None):
    return JobResult(job=f"{domain}/s0/{method}-{target}", domain=domain, seed=0, method=method, target=target,
                     layer=layer, algo="grpo", score=score)


def build_sweep(path, domains=("math",)):
    """A small finished sweep: base, full and every single layer of a 4-layer model, for each domain."""
    path.mkdir(parents=True, exist_ok=True)
    if "math" in domains:
        append_result(path, _row("math", "base", "none", 0.40))
        for layer, score in MATH_LAYER_SCORES.items():
            append_result(path, _row("math", "layer", str(layer), score, layer))
        append_result(path, _row("math", "full", "all", 0.60))
    if "code" in domains:
        append_result(path, _row("code", "base", "none", 0.10))
        append_result(path, _row("code", "full", "all", 0.30))
        for layer, score in CODE_LAYER_SCORES.items():
            append_result(path, _row("code", "layer", str(layer), score, layer))
    write_ranking(path)  # as a sweep does after each job
    return path


# ----------------------------------------------------------------------------- mid:K


@pytest.mark.parametrize("num_layers", [28, 30, 36])
@pytest.mark.parametrize("k", [5, 10])
def test_mid_k_selects_exactly_the_formula_layers(num_layers, k):
    lo, hi = math.floor(num_layers / 2 - k / 2), math.floor(num_layers / 2 + k / 2)
    expected = [layer for layer in range(num_layers) if lo <= layer < hi]
    assert parse_layer_spec(f"mid:{k}", num_layers)[0] == expected
    assert len(expected) == k


# ----------------------------------------------------------------------------- top:K / bottom:K


def test_rank_layers_breaks_ties_toward_the_lower_layer_index():
    ranking = {0: 0.5, 1: 0.9, 2: 0.8, 3: 0.9, 4: 0.5}
    assert rank_layers(ranking, 1, "top") == [1]
    assert rank_layers(ranking, 2, "top") == [1, 3]
    assert rank_layers(ranking, 3, "top") == [1, 2, 3]
    assert rank_layers(ranking, 1, "bottom") == [0]
    assert rank_layers(ranking, 3, "bottom") == [0, 2, 4]


def test_top_and_bottom_k_read_the_sweep(tmp_path):
    sweep = build_sweep(tmp_path / "sweep", ("math", "code"))
    top = resolve_ranked_spec(f"top:2@{sweep}", "math")
    assert top.layers == [1, 3]
    assert top.ranking == pytest.approx({0: 0.5, 1: 0.9, 2: 0.8, 3: 0.9})
    assert resolve_ranked_spec(f"top:1@{sweep}", "math").layers == [1]  # 1 and 3 tie: the lower index wins
    assert resolve_ranked_spec(f"bottom:1@{sweep}", "math").layers == [0]
    assert resolve_ranked_spec(f"top:2@{sweep}", "code").layers == [0, 2]
    assert resolve_ranked_spec(f"top:2@{sweep}", "math").explicit == "1,3"


def test_ranked_spec_fails_clearly_without_the_domain_or_the_sweep(tmp_path):
    sweep = build_sweep(tmp_path / "sweep", ("math",))
    with pytest.raises(UserError, match=r"no single-layer results for domain 'code' \(it has: math\)"):
        resolve_ranked_spec(f"top:2@{sweep}", "code")
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"sweep directory {missing} does not exist"):
        resolve_ranked_spec(f"top:2@{missing}", "math")
    with pytest.raises(UserError, match="ranks only 4 layers"):
        resolve_ranked_spec(f"top:5@{sweep}", "math")
    append_result(sweep, _row("math", "layer", "9", 0.9, 9))  # results moved on: the stored ranking is stale
    with pytest.raises(UserError, match="ranking.json is older than the sweep's results: run `onelayer report"):
        resolve_ranked_spec(f"top:2@{sweep}", "math")
    (sweep / "ranking.json").unlink()
    with pytest.raises(UserError, match="has no ranking.json: run `onelayer report"):
        resolve_ranked_spec(f"top:2@{sweep}", "math")
    for bad in ("top:x@dir", "top:0@dir", "top:3@", "top:3"):
        with pytest.raises(UserError, match="top:K@SWEEP_DIR"):
            parse_layer_spec(bad, 30)


def test_a_run_stores_the_resolved_layers_and_resume_does_not_reread_the_sweep(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    sweep = build_sweep(tmp_path / "sweep", ("math",))
    run = tmp_path / "run"
    model, tok = _load(d)
    Trainer(tiny_config(d, run, layers=f"top:2@{sweep}", save_every=1), model=model, tokenizer=tok).train(progress=False)
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["layers"] == f"top:2@{sweep}"
    assert stored["selection"]["layer_indices"] == [1, 3]
    assert stored["ranked_layers"][f"top:2@{sweep}"]["layers"] == [1, 3]
    assert stored["ranked_layers"][f"top:2@{sweep}"]["domain"] == "math"

    shutil.rmtree(sweep)  # a resumed run must use the stored list, not the (now missing) sweep
    model, tok = _load(d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(tiny_config(d, run, layers=f"top:2@{sweep}", steps=2, save_every=1), resume=True,
                      model=model, tokenizer=tok)
    assert trainer.selection.layer_indices == [1, 3]
    trainer.train(progress=False)
    changed = {n for n in before if not torch.equal(before[n], model.state_dict()[n])}
    assert {n.split(".")[2] for n in changed} == {"1", "3"}


def test_a_missing_sweep_fails_before_the_run_directory_is_written(tiny_model_dirs, tmp_path):
    missing = tmp_path / "no-sweep"
    with pytest.raises(UserError, match=str(missing)):
        Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "run", layers=f"bottom:2@{missing}"))
    assert not (tmp_path / "run").exists()


def test_rank_domain_picks_another_domains_ranking(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    sweep = build_sweep(tmp_path / "sweep", ("math", "code"))
    model, tok = _load(d)
    trainer = Trainer(tiny_config(d, tmp_path / "run", layers=f"top:2@{sweep}", rank_domain="code"),
                      model=model, tokenizer=tok)
    assert trainer.selection.layer_indices == [0, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["ranked_layers"][f"top:2@{sweep}"]["domain"] == "code"


def test_cli_names_a_missing_sweep_and_exits_2(tmp_path):
    from test_cli import run_cli

    missing = tmp_path / "no-sweep"
    r = run_cli("train", "--layers", f"top:5@{missing}", "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 2
    assert str(missing) in r.stderr and "does not exist" in r.stderr


# ----------------------------------------------------------------------------- per-layer learning rates


def test_layer_lr_parses_absolute_and_relative_rates():
    rules = parse_layer_lr("12-16=1e-5; top:5@sweeps/a=2x;15.mlp=3X")
    assert [(r.spec, r.value, r.relative) for r in rules] == [
        ("12-16", 1e-5, False), ("top:5@sweeps/a", 2.0, True), ("15.mlp", 3.0, True)]
    assert rules[0].lr(1e-6) == 1e-5 and rules[1].lr(5e-6) == pytest.approx(1e-5)
    assert [r.spec for r in parse_layer_lr({"1,2": "2x"})] == ["1,2"]
    for bad in ("12-16", "12=fast", "12=-1", "=2x", "twelve=2x"):
        with pytest.raises(UserError):
            parse_layer_lr(bad)


def _groups(trainer):
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {g["name"]: (g["lr"], {names[id(p)].split(".")[2] for p in g["params"]}) for g in trainer.optimizer.param_groups}


def test_layer_lr_groups_carry_their_rates_and_frozen_layers_have_no_optimizer_state(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    model, tok = _load(d)
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(d, run, layers="1-3", lr=1e-3, layer_lr="2=2x;3=1e-2"), model=model, tokenizer=tok)
    assert _groups(trainer) == {"base": (1e-3, {"1"}), "rule1": (2e-3, {"2"}), "rule2": (1e-2, {"3"})}
    result = trainer.train(progress=False)

    trained = {id(p) for p in trainer.params}
    assert trainer.optimizer.state and set(map(id, trainer.optimizer.state)) <= trained
    for name, p in model.named_parameters():
        if name.startswith("model.layers.0.") or "embed" in name:
            assert id(p) not in trainer.optimizer.state, f"frozen {name} has optimizer state"
    stored = json.loads((run / "config.json").read_text())
    assert [(g["name"], g["lr"], g["layers"]) for g in stored["param_groups"]] == [
        ("base", 1e-3, [1]), ("rule1", 2e-3, [2]), ("rule2", 1e-2, [3])]
    m = result.metrics[0]
    assert (m["lr"], m["lr/base"], m["lr/rule1"], m["lr/rule2"]) == (1e-3, 1e-3, 2e-3, 1e-2)


def test_warmup_scales_every_group_from_its_own_rate(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    model, tok = _load(d)
    res = Trainer(tiny_config(d, tmp_path / "run", layers="1-2", lr=1e-3, layer_lr="2=4x", warmup_steps=2),
                  model=model, tokenizer=tok).train(progress=False)
    assert res.metrics[0]["lr/base"] == pytest.approx(5e-4) and res.metrics[0]["lr/rule1"] == pytest.approx(2e-3)


def test_boost_top_k_trains_every_layer_with_the_best_ones_faster(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    sweep = build_sweep(tmp_path / "sweep")
    model, tok = _load(d)
    trainer = Trainer(tiny_config(d, tmp_path / "run", layers="all", lr=1e-3, layer_lr=f"top:2@{sweep}=2x"),
                      model=model, tokenizer=tok)
    assert _groups(trainer) == {"base": (1e-3, {"0", "2"}), "rule1": (2e-3, {"1", "3"})}
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["ranked_layers"][f"top:2@{sweep}"]["layers"] == [1, 3]


def test_layer_lr_never_unfreezes_a_layer(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen3"])
    with pytest.raises(UserError, match=r"layers 0.*--layers all"):
        Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "run", layers="1", layer_lr="0-1=2x"),
                model=model, tokenizer=tok)


def test_single_layer_lr_scale_applies_to_one_block_only_and_is_recorded(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    model, tok = _load(d)
    res = Trainer(tiny_config(d, tmp_path / "one", layers="2", lr=1e-3, single_layer_lr_scale=3.0),
                  model=model, tokenizer=tok).train(progress=False)
    assert res.metrics[0]["lr"] == pytest.approx(3e-3) and res.metrics[0]["single_layer_lr_scale"] == 3.0
    stored = json.loads((tmp_path / "one" / "config.json").read_text())
    assert stored["single_layer_lr_scale"] == 3.0 and stored["param_groups"][0]["lr"] == pytest.approx(3e-3)

    model, tok = _load(d)
    trainer = Trainer(tiny_config(d, tmp_path / "two", layers="1-2", lr=1e-3, single_layer_lr_scale=3.0),
                      model=model, tokenizer=tok)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3
    assert json.loads((tmp_path / "two" / "config.json").read_text())["single_layer_lr_scale"] == 1.0
