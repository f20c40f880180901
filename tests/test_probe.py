"""The layer probe (`onelayer probe`, issue 25): per-layer scores on tiny models, its ranking.json and
`--layers top:K@PROBE_DIR[:METHOD]`, and `onelayer report SWEEP_DIR --probe PROBE_DIR` on sweeps with known answers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from test_cli import TINY_FLAGS, run_cli
from test_trainer import _load
from tiny_models import build_tiny

from onelayer.benchmarks.probe import (
    METHODS,
    MethodResult,
    accumulate_policy_gradient,
    lookahead_step,
    read_probe,
    restore_block,
    row_logprobs,
    run_probe,
    skipped,
    write_probe,
)
from onelayer.benchmarks.report import write_report
from onelayer.benchmarks.sweep_results import JobResult, append_result, write_ranking
from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.layers import RankedLayers, check_layer_spec, resolve_ranked_spec
from onelayer.training.rows import rows_from
from onelayer.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
# A tiny batch with a varied reward (longer answers score more) so random-init models have a gradient.
TINY_TRAIN = {"num_tasks": 2, "num_generations": 4, "max_new_tokens": 6, "micro_batch_size": 3,
              "reward_funcs": ["support_rewards:length_reward"]}
ZEROED = 1  # the block whose every weight is zero in the probed model


@pytest.fixture(scope="module")
def zeroed_model_dir(tmp_path_factory, tokenizer):
    """A tiny 4-block Qwen3 whose block 1 has every weight (norms included) set to 0."""
    model = build_tiny("qwen3", tokenizer)
    with torch.no_grad():
        for p in model.model.layers[ZEROED].parameters():
            p.zero_()
    d = tmp_path_factory.mktemp("zeroed")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _probe(model_dir, out, **kw):
    opts = dict(model=str(model_dir), train=TINY_TRAIN, batches=2, panel_items=4, fisher_samples=4, seed=0,
                log=lambda msg: None)
    opts.update(kw)
    return run_probe("onelayer/Math-v0", out, **opts)


@pytest.fixture(scope="module")
def probed(zeroed_model_dir, tmp_path_factory):
    """Every method on the zeroed-block model, twice with seed 0, and the sampled methods once with seed 1."""
    root = tmp_path_factory.mktemp("probes")
    first = _probe(zeroed_model_dir, root / "a")
    again = _probe(zeroed_model_dir, root / "b", methods=["grad-norm", "fisher", "lookahead"])
    other = _probe(zeroed_model_dir, root / "c", methods=["grad-norm"], seed=1)
    return root, first, again, other


# ----------------------------------------------------------------------------- the methods on tiny models


def test_every_method_scores_every_layer_and_records_its_cost(probed):
    root, first, _, _ = probed
    assert list(first) == list(METHODS)  # the recommended order, whatever order they ran in
    for name, r in first.items():
        assert sorted(r.scores) == [0, 1, 2, 3], name
        assert all(isinstance(v, float) and math.isfinite(v) for v in r.scores.values()), name
        assert r.seconds > 0, name
    info = json.loads((root / "a" / "probe.json").read_text())
    est = info["sweep_estimate"]
    assert est["seconds"] > 0 and est["num_layers"] == 4 and "single-layer jobs" in est["how"]
    for name, r in first.items():  # the cost is also a fraction of the sweep the probe replaces
        assert info["methods"][name]["fraction_of_sweep"] == pytest.approx(r.seconds / est["seconds"])
    assert (root / "a" / "probe.png").stat().st_size > 0
    md = (root / "a" / "probe.md").read_text()
    assert "fraction of the sweep" in md and "| 3 |" in md


def test_scores_are_deterministic_given_the_seed(probed):
    _, first, again, other = probed
    for name in ("grad-norm", "fisher", "lookahead"):
        assert again[name].scores == first[name].scores, name
    assert other["grad-norm"].scores != first["grad-norm"].scores  # another seed samples other batches


def test_a_zeroed_layer_scores_zero_on_every_method(probed):
    _, first, _, _ = probed
    # An all-zero block is a saddle: its output and every gradient through its weights are 0 ...
    assert first["grad-norm"].scores[ZEROED] == 0.0
    assert first["grad-rel"].scores[ZEROED] == 0.0
    assert first["fisher"].scores[ZEROED] == 0.0
    assert first["lookahead"].scores[ZEROED] == 0.0  # ... so one step leaves it where it is
    # ... and skipping it changes no answer.
    assert first["skip"].scores[ZEROED] == 0.0
    assert first["skip"].details["changed_answers"][ZEROED] == 0.0
    for layer in (0, 2, 3):
        assert first["grad-norm"].scores[layer] > 0 and first["fisher"].scores[layer] > 0
        assert first["grad-rel"].scores[layer] > 0 and first["lookahead"].scores[layer] != 0
    # (A random tiny model answers the same whatever block is skipped, so the other blocks' damage is 0 too:
    # test_skipping_a_block_passes_its_input_through shows skipping them does change the logits.)
    for name in ("grad-norm", "grad-rel", "fisher"):
        assert first[name].ranking[-1] == ZEROED, name


def test_skipping_a_block_passes_its_input_through(zeroed_model_dir, tokenizer):
    model, _ = _load(zeroed_model_dir)
    ids = torch.tensor([tokenizer("What is 3 + 4?")["input_ids"]])
    with torch.no_grad():
        plain = model(ids).logits
        with skipped(model.model.layers[ZEROED]):
            assert torch.equal(model(ids).logits, plain)  # a zero block is already the identity
        with skipped(model.model.layers[2]):
            assert not torch.allclose(model(ids).logits, plain)
        assert torch.equal(model(ids).logits, plain)  # the hook is gone


def test_the_lookahead_step_is_the_trainers_single_layer_step(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["llama"])
    cfg = TrainConfig(model=str(tiny_model_dirs["llama"]), out=str(tmp_path / "sampler"), layers="all", eval_size=0,
                      lr=1e-3, max_grad_norm=0.05, single_layer_lr_scale=2.0, kl_metric=False, seed=3, **TINY_TRAIN)
    sampler = Trainer(cfg, model=model, tokenizer=tok)
    trajs = sampler.sample(1)
    adv, _ = sampler.advantages(trajs)
    model.zero_grad(set_to_none=True)
    accumulate_policy_gradient(row_logprobs(sampler), rows_from(trajs, adv), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    old = lookahead_step(model, 2, cfg)
    stepped = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {n for n in before if not torch.equal(before[n], stepped[n])} == {
        n for n in before if n.startswith("model.layers.2.")}
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    restore_block(model, 2, old)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    # The trainer's own update of block 2 alone (lr x 2, clipped, fresh AdamW) on the same batch moves it the same way.
    fresh, _ = _load(tiny_model_dirs["llama"])
    Trainer(dataclasses.replace(cfg, out=str(tmp_path / "single"), layers="2"), model=fresh, tokenizer=tok).update(trajs, adv)
    # atol: 0.5% of the 2e-3 step. AdamW's first step is lr * g / (|g| + eps): about lr * sign(g), except where |g|
    # is within a few eps (1e-8), where the float rounding of the two paths' gradients (the full model's backward
    # against the replayed lower states) moves it: one element (gradient -7.9e-7 before clipping, step 1.69e-3 of 2e-3)
    # differed by 2e-6.
    for n, p in fresh.named_parameters():
        torch.testing.assert_close(p.detach(), stepped[n], rtol=0, atol=1e-5)
    assert max(float((stepped[n] - before[n]).abs().max()) for n in before) == pytest.approx(2e-3, rel=0.01)


@pytest.mark.parametrize("method,message", [("grad-norm", "carry no learning signal"),
                                            ("lookahead", "panel of 8 rollouts has one reward for all")])
def test_a_batch_without_signal_is_a_user_error(method, message, tiny_model_dirs, tmp_path):
    # math on a random tiny model: every answer is wrong, every reward and advantage 0, every gradient 0
    with pytest.raises(UserError, match=message):
        _probe(tiny_model_dirs["qwen3"], tmp_path / "p", methods=[method], batches=1,
               train={k: v for k, v in TINY_TRAIN.items() if k != "reward_funcs"})
    assert not (tmp_path / "p" / "ranking.json").exists()


# ----------------------------------------------------------------------------- ranking.json and top:K@PROBE_DIR


def _synthetic(tmp_path, name="probe", domain="math", model="tiny", num_layers=4, scores=None):
    """A probe directory as `onelayer probe` writes it, with hand-set scores (4 layers by default)."""
    scores = scores or {"grad-rel": [0.1, 0.4, 0.3, 0.2], "fisher": [5.0, 1.0, 2.0, 9.0], "skip": [0.0, 0.1, 0.3, 0.2]}
    if num_layers != 4 and len(next(iter(scores.values()))) != num_layers:
        scores = {"grad-rel": [float(i) for i in range(num_layers)]}
    results = {m: MethodResult(dict(enumerate(map(float, v))), 7.0 + i) for i, (m, v) in enumerate(scores.items())}
    write_probe(tmp_path / name, model, num_layers, domain, f"onelayer/{domain.title()}-v0", results)
    return tmp_path / name


def test_ranking_json_has_the_issue_schema(probed):
    root, first, _, _ = probed
    data = json.loads((root / "a" / "ranking.json").read_text())
    assert {"model", "num_layers", "methods"} <= set(data) and data["num_layers"] == 4
    assert data["domain"] == "math" and data["env"] == "onelayer/Math-v0"  # what top:K@DIR checks the domain by
    assert list(data["methods"]) == list(METHODS)
    for name, m in data["methods"].items():
        assert set(m) == {"scores", "ranking", "seconds"}
        assert list(m["scores"]) == ["0", "1", "2", "3"]
        assert sorted(m["ranking"]) == [0, 1, 2, 3]
        values = [m["scores"][str(i)] for i in m["ranking"]]
        assert values == sorted(values, reverse=True), name  # best first
        assert m["seconds"] == pytest.approx(first[name].seconds)


def test_top_k_at_probe_dir_resolves_with_the_first_or_the_named_method(tmp_path):
    probe = _synthetic(tmp_path)
    top = resolve_ranked_spec(f"top:2@{probe}", "math")  # no method: the first listed (grad-rel)
    assert (top.layers, top.method) == ([1, 2], "grad-rel")
    assert top.ranking == pytest.approx({0: 0.1, 1: 0.4, 2: 0.3, 3: 0.2})
    assert resolve_ranked_spec(f"top:2@{probe}:fisher", "math").layers == [0, 3]
    assert resolve_ranked_spec(f"bottom:1@{probe}:skip", "math").layers == [0]
    assert "probe score fisher" in resolve_ranked_spec(f"top:1@{probe}:fisher", "math").describe()
    stored = resolve_ranked_spec(f"top:2@{probe}:fisher", "math").to_dict()
    assert RankedLayers.from_dict(stored).method == "fisher"
    old_run = {k: v for k, v in stored.items() if k != "method"}  # a run stored before probes existed
    assert RankedLayers.from_dict(old_run).method == "contribution"
    check_layer_spec(f"top:3@{probe}:fisher")
    odd = tmp_path / "run:fisher"  # a directory whose own name ends in :word is read as a directory
    shutil.copytree(probe, odd)
    assert resolve_ranked_spec(f"top:2@{odd}", "math").method == "grad-rel"


def test_top_k_at_probe_dir_refuses_what_it_cannot_rank(tmp_path):
    probe = _synthetic(tmp_path)
    for spec, domain, message in [
        (f"top:2@{probe}:nope", "math", "has no method 'nope'; it has: grad-rel, fisher, skip"),
        (f"top:2@{probe}", "code", "ranked the layers of domain 'math'.*not 'code'.*--rank-domain math"),
        (f"top:5@{probe}", "math", "ranks only 4 layers"),
        (f"top:2@{tmp_path / 'missing'}", "math", "does not exist.*onelayer probe --out"),
    ]:
        with pytest.raises(UserError, match=message) as e:
            resolve_ranked_spec(spec, domain)
        assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a finished probe"):
        resolve_ranked_spec(f"top:1@{tmp_path / 'empty'}", "math")
    data = json.loads((probe / "ranking.json").read_text())
    data["methods"]["fisher"]["scores"]["2"] = float("nan")
    (probe / "ranking.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="non-finite scores for layers \\[2\\]"):
        resolve_ranked_spec(f"top:1@{probe}:fisher", "math")


def test_a_sweep_ranks_by_contribution_with_or_without_the_method_name(tmp_path):
    from test_layer_aware import build_sweep

    sweep = build_sweep(tmp_path / "sweep")
    assert resolve_ranked_spec(f"top:2@{sweep}:contribution", "math").layers == [1, 3]
    assert resolve_ranked_spec(f"top:2@{sweep}", "math").method == "contribution"
    with pytest.raises(UserError, match="has no method 'fisher'; it has: contribution"):
        resolve_ranked_spec(f"top:2@{sweep}:fisher", "math")


def test_the_trainer_trains_a_probes_top_k(tiny_model_dirs, tmp_path):
    probe = _synthetic(tmp_path)
    model, tok = _load(tiny_model_dirs["qwen3"])
    cfg = TrainConfig(model=str(tiny_model_dirs["qwen3"]), out=str(tmp_path / "run"), layers=f"top:2@{probe}:fisher",
                      eval_size=0, **TINY_TRAIN)
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    assert trainer.selection.layer_indices == [0, 3]
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["ranked_layers"][f"top:2@{probe}:fisher"]
    assert stored["method"] == "fisher" and stored["layers"] == [0, 3]


# ----------------------------------------------------------------------------- report --probe

SEEDS = (0, 1, 2)
BASE, FULL = 0.30, (0.50, 0.52, 0.48)
# Per-seed scores of layers 0..5: their C_l order is 5 > 2 > 4 > 1 > 0 > 3 on every seed.
LAYER = {0: (0.33, 0.34, 0.32), 1: (0.36, 0.37, 0.35), 2: (0.46, 0.47, 0.44), 3: (0.31, 0.315, 0.305),
         4: (0.40, 0.42, 0.39), 5: (0.49, 0.51, 0.47)}


def _sweep_store(tmp_path, model="tiny"):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({
        "spec": {"model": model, "algos": ["grpo"], "domains": ["math"], "steps": 5, "single_layer_lr_scale": 1.0},
        "all": {"seeds": list(SEEDS)}, "num_layers": 6, "eval_suites": {"math": ["math-l1"]}}))
    append_result(d, JobResult("math/base", "math", -1, "base", "none", None, "none", BASE, {"math-l1": BASE}, wall_s=10))
    for s in SEEDS:
        append_result(d, JobResult(f"math/grpo/s{s}/full", "math", s, "full", "all", None, "grpo", FULL[s],
                                   {"math-l1": FULL[s]}, wall_s=100 + 10 * s))
        for layer, vals in LAYER.items():
            append_result(d, JobResult(f"math/grpo/s{s}/layer-{layer}", "math", s, "layer", str(layer), layer, "grpo",
                                       vals[s], {"math-l1": vals[s]}, wall_s=50))
    write_ranking(d)
    return d


def test_report_probe_gives_the_known_correlations_overlaps_and_cost(tmp_path):
    sweep = _sweep_store(tmp_path)
    c = [(np.mean(LAYER[i]) - BASE) / (np.mean(FULL) - BASE) for i in range(6)]
    swapped = list(c)
    swapped[4], swapped[1] = c[1], c[4]  # 3rd and 4th best exchange places
    probe = _synthetic(tmp_path, model="tiny", num_layers=6, scores={
        "grad-rel": [2 * v + 1 for v in c], "fisher": swapped, "skip": [-v for v in c]})
    before = set(_report_keys(sweep))
    write_report(sweep, [probe])
    numbers = json.loads((sweep / "report" / "numbers.json").read_text())
    assert set(numbers) == before | {"probe"}  # the existing keys stay as they are
    (check,) = numbers["probe"]
    entry = check["series"]["math/grpo"]
    assert entry["layers"] == [0, 1, 2, 3, 4, 5] and entry["seeds"] == [0, 1, 2]
    assert entry["sweep_cost"]["seconds"] == pytest.approx(10 + 110 + 6 * 50)
    perfect, swap, reverse = (entry["methods"][m] for m in ("grad-rel", "fisher", "skip"))
    assert (perfect["spearman"], perfect["kendall"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert perfect["spearman_ci"] == pytest.approx([1.0, 1.0])  # every seed ranks the layers the same way
    assert perfect["top_k_overlap"] == {"3": 1.0, "5": 1.0} and perfect["top_k_chance"]["3"] == 0.5
    assert swap["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))  # one adjacent swap: sum d^2 = 2
    assert swap["spearman"] == pytest.approx(stats.spearmanr(swapped, c).statistic)
    assert swap["kendall"] == pytest.approx(13 / 15)  # 14 concordant, 1 discordant pair of 15
    assert swap["top_k_overlap"]["3"] == pytest.approx(2 / 3) and swap["top_k_overlap"]["5"] == 1.0
    assert (reverse["spearman"], reverse["kendall"], reverse["top_k_overlap"]["3"]) == (
        pytest.approx(-1.0), pytest.approx(-1.0), 0.0)
    assert perfect["spearman_p"] < 0.01 < 0.99 < reverse["spearman_p"]
    assert perfect["fraction_of_sweep"] == pytest.approx(7.0 / 420)
    assert "## Layer probe vs measured contribution" in (sweep / "report" / "report.md").read_text()
    assert "| fisher | 0.943 [" in (sweep / "report" / "summary.txt").read_text()


def test_the_results_probe_check_table_is_the_reports_with_the_stored_paths(tmp_path):
    from onelayer.benchmarks.report import probe_agreement, probe_markdown
    from onelayer.benchmarks.results import _sweep, probe_check

    _sweep_store(tmp_path)
    c = [(np.mean(LAYER[i]) - BASE) / (np.mean(FULL) - BASE) for i in range(6)]
    _synthetic(tmp_path, model="tiny", num_layers=6, scores={"grad-rel": c, "skip": [-v for v in c]})
    text = probe_check(tmp_path, "sweep", "probe")
    assert text.startswith("probe probe (tiny, math, seed ")  # the stored relative path, not this machine's
    assert "| grad-rel | 1.000 [1.00, 1.00] |" in text and "| skip | -1.000 [-1.00, -1.00] |" in text
    _, meta, results = _sweep(tmp_path, "sweep")
    direct = probe_markdown({**probe_agreement(results, meta, tmp_path / "probe"), "probe_dir": "probe"})
    assert text == direct.rstrip()  # same numbers as `onelayer report --probe`, bootstrap included


def _report_keys(sweep):
    write_report(sweep)
    return json.loads((sweep / "report" / "numbers.json").read_text())


def test_report_probe_refuses_a_probe_of_another_model_or_domain(tmp_path):
    sweep = _sweep_store(tmp_path)
    with pytest.raises(UserError, match="scored other, the sweep trained tiny"):
        write_report(sweep, [_synthetic(tmp_path, "m", model="other", num_layers=6)])
    with pytest.raises(UserError, match="ranked domain 'code'; the sweep has math"):
        write_report(sweep, [_synthetic(tmp_path, "d", domain="code", num_layers=6)])
    with pytest.raises(UserError, match="scored 4 layers, the sweep's model has 6"):
        write_report(sweep, [_synthetic(tmp_path, "n")])
    with pytest.raises(UserError, match="is a sweep directory, not a probe's"):
        write_report(sweep, [sweep])


def test_report_probe_reads_the_stored_multi_seed_sweep(tmp_path):
    sweep = tmp_path / "cpu-math"
    shutil.copytree(REPO / "results" / "sweeps" / "cpu-math", sweep)
    depth = [-abs(i - 13) for i in range(30)]  # peaks mid-depth, as the measured C_l do
    probe = _synthetic(tmp_path, model="smollm2-135m", num_layers=30, scores={"grad-rel": depth})
    write_report(sweep, [probe])
    (check,) = json.loads((sweep / "report" / "numbers.json").read_text())["probe"]
    entry = check["series"]["math/grpo"]
    assert entry["layers"] == [0, 6, 12, 15, 22, 29] and entry["seeds"] == [0, 1, 2]
    m = entry["methods"]["grad-rel"]
    assert m["spearman"] == pytest.approx(stats.spearmanr([depth[i] for i in entry["layers"]],
                                                          m["contribution"]).statistic)
    assert m["spearman_ci"][0] <= m["spearman"] <= m["spearman_ci"][1]
    assert entry["sweep_cost"]["seconds"] > 3600  # base + full + 30 x a measured single-layer job


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("args,needle", [
    (["--env", "onelayer/Nope-v0"], "unknown domain or env id 'onelayer/Nope-v0'"),
    (["--env", "onelayer/Math-v0", "--methods", "grad-norm,nope"], "unknown probe method(s) nope"),
    (["--env", "onelayer/Math-v0", "--batches", "0"], "--batches must be an integer >= 1"),
    (["--env", "onelayer/Math-v0", "--suite", "humaneval"], "suite humaneval scores onelayer/Code-v0"),
    (["--preset", "cpu-code", "--env", "onelayer/Math-v0"], "preset 'cpu-code' sweeps code, not 'math'"),
    ([], "--env ID is required"),
])
def test_probe_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    r = run_cli("probe", "--out", tmp_path / "p", *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "p" / "ranking.json").exists()


def test_probe_and_report_refuse_each_others_directories(tmp_path):
    sweep = _sweep_store(tmp_path)
    r = run_cli("probe", "--env", "onelayer/Math-v0", "--out", sweep)
    assert r.returncode == 2 and "holds a sweep" in r.stderr
    r = run_cli("report", sweep, "--probe", tmp_path / "nowhere")
    assert r.returncode == 2 and "probe directory" in r.stderr and r.stderr.count("\n") == 1


def test_probe_command_then_train_its_top_k(tiny_model_dirs, tmp_path):
    probe = tmp_path / "probe"
    r = run_cli("probe", "--env", "onelayer/Math-v0", "--model", tiny_model_dirs["qwen3"], "--out", probe,
                "--methods", "fisher,grad-norm", "--batches", "1", "--fisher-samples", "4",
                "--train", json.dumps(TINY_TRAIN))
    assert r.returncode == 0, r.stderr
    assert "| grad-norm (top:K default) |" in r.stdout and "| fisher |" in r.stdout
    ranked = read_probe(probe)
    assert list(ranked.methods) == ["grad-norm", "fisher"]
    top = sorted(ranked.methods["fisher"].ranking[:2])
    run = tmp_path / "run"
    r = run_cli("train", "--model", tiny_model_dirs["qwen3"], "--env", "onelayer/Math-v0", "--layers",
                f"top:2@{probe}:fisher", "--steps", "1", "--out", run, *TINY_FLAGS)
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["selection"]["layer_indices"] == top
    assert config["ranked_layers"][f"top:2@{probe}:fisher"]["method"] == "fisher"
    r = run_cli("train", "--model", tiny_model_dirs["qwen3"], "--layers", f"top:2@{probe}:nope", "--steps", "1",
                "--out", tmp_path / "bad", *TINY_FLAGS)
    assert r.returncode == 2 and "has no method 'nope'" in r.stderr


# ----------------------------------------------------------------------------- ranked specs in train, sweep and compare


def test_train_refreshes_a_stale_sweep_ranking_named_with_its_method(tmp_path):
    from test_layer_aware import _row, build_sweep

    from onelayer.cli import _refresh_rankings

    for name, text in [("a", f"top:2@{tmp_path / 'a'}:contribution"),  # --layers
                       ("b", f"0-3=1e-5;top:1@{tmp_path / 'b'}:contribution=2x"),  # --layer-lr
                       ("c", {f"top:1@{tmp_path / 'c'}:contribution": "2x"})]:  # --layer-lr from a config file
        sweep = build_sweep(tmp_path / name)
        append_result(sweep, _row("math", "layer", "0", 0.62, 0))  # layer 0 is now the best; ranking.json is stale
        with pytest.raises(UserError, match="older than the sweep's results"):
            resolve_ranked_spec(f"top:1@{sweep}", "math")
        _refresh_rankings([text])
        assert resolve_ranked_spec(f"top:1@{sweep}:contribution", "math").layers == [0]


def test_a_sweep_of_a_probes_top_k_plans_those_layers(tiny_model_dirs, tmp_path):
    from typer.testing import CliRunner

    from onelayer.benchmarks.sweep import SweepSpec, plan_jobs, validate_spec
    from onelayer.cli import app

    model = str(tiny_model_dirs["qwen3"])
    probe = _synthetic(tmp_path, model=model)
    spec = SweepSpec(model=model, algos=["grpo"], layers=f"top:2@{probe}", seeds=[0])
    validate_spec(spec)
    assert [j.id for j in plan_jobs(spec, 4)] == ["math/base", "math/grpo/s0/full", "math/grpo/s0/layer-1",
                                                  "math/grpo/s0/layer-2"]  # grad-rel, listed first: 0.4, 0.3
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--model", model, "--algo", "grpo",
                                   "--seeds", "1", "--layers", f"0,top:2@{probe}:fisher,bottom:1@{probe}", "--dry-run"])
    assert res.exit_code == 0, res.output
    planned = re.findall(r"math/[\w/.-]+", res.output)  # (stderr's loading bar shares the output)
    assert planned == ["math/base", "math/grpo/s0/full", "math/grpo/s0/layer-0", "math/grpo/s0/layer-3"]
    assert not (tmp_path / "sw").exists()

    for layers, domains, message in [
        (f"top:2@{probe}:nope", ["math"], "has no method 'nope'"),
        (f"top:2@{probe}", ["math", "code"], "ranked the layers of domain 'math'.*not 'code'"),
        (f"top:2@{_synthetic(tmp_path, 'other', model='smollm2-135m')}", ["math"], "ranked the layers of smollm2-135m"),
    ]:
        with pytest.raises(UserError, match=message):
            validate_spec(SweepSpec(model=model, domains=domains, layers=layers))
    wide = _synthetic(tmp_path, "wide", model=model, num_layers=6)  # ranks layers 0..5: top is 5
    with pytest.raises(UserError, match=r"picks layers \[5\].*the model has 4 layers"):
        SweepSpec(model=model, layers=f"top:1@{wide}").targets(4, "math")


def _tiny_sweep_and_probe(tmp_path, model_dir):
    """A hand-written sweep of the tiny model (C_l: layers 1, 2 best, 3 worst) and a probe of it ranking otherwise
    (grad-rel: 1, 2, 3, 0; fisher: 3, 0, 2, 1; skip: 2, 3, 1, 0)."""
    from test_sweep import _hand_built_sweep

    return _hand_built_sweep(tmp_path / "sweep", str(model_dir)), _synthetic(tmp_path, model=str(model_dir))


def test_compare_rank_by_plans_probe_methods_beside_the_sweeps(tiny_model_dirs, tmp_path):
    from onelayer.benchmarks.compare import parse_methods, plan_compare
    from onelayer.benchmarks.sweep import job_train_config

    sweep, probe = _tiny_sweep_and_probe(tmp_path, tiny_model_dirs["qwen3"])
    methods = parse_methods("full,only-top2,probe-only-top2,probe-only-bottom1,probe-boost-top1,mid2")
    spec, jobs = plan_compare(sweep, methods, seeds=[2], rank_by=f"{probe}:fisher", log=lambda m: None)
    assert [j.id for j in jobs] == ["math/base"] + [f"math/grpo/s2/{m}" for m in methods]
    by_id = {j.method: j for j in jobs}
    assert by_id["only-top2"].target == f"top:2@{sweep.resolve()}"  # the sweep's methods: as before
    assert by_id["probe-only-top2"].target == f"top:2@{probe.resolve()}:fisher"
    assert by_id["probe-only-bottom1"].target == f"bottom:1@{probe.resolve()}:fisher"
    assert dict(by_id["probe-boost-top1"].options) == {"layer_lr": f"top:1@{probe.resolve()}:fisher=2x"}

    def layers(method):
        cfg = job_train_config(spec, by_id[method], tmp_path / "run")
        return resolve_ranked_spec(cfg.layers, "math").layers

    assert layers("only-top2") == [1, 2] and layers("probe-only-top2") == [0, 3]  # fisher: 9, 5 on layers 3, 0
    assert layers("probe-only-bottom1") == [1]
    # Without :METHOD the jobs pin the method the probe lists first, so a resumed job ranks by the same scores.
    _, jobs = plan_compare(sweep, ["probe-only-top2"], seeds=[2], rank_by=str(probe), log=lambda m: None)
    assert jobs[-1].target == f"top:2@{probe.resolve()}:grad-rel"


def test_compare_job_ids_of_the_stored_compare_are_unchanged():
    from onelayer.benchmarks.compare import compare_jobs, method_options

    stored = REPO / "results" / "compares" / "cpu-math"
    ids = {json.loads(line)["job"] for line in (stored / "results.jsonl").read_text().splitlines() if line.strip()}
    methods = ["full", "only-top3", "mid3", "only-bottom3", "lora-matched"]
    assert {j.id for j in compare_jobs(methods, "/s", ["math"], ["grpo"], [3, 4, 5])} == ids  # it resumes as it is
    assert method_options("only-top3", "/s", 3) == ("top:3@/s", ())
    assert method_options("boost-top5", "/s", 5, "math") == ("all", (("layer_lr", "top:5@/s=2x"), ("rank_domain", "math")))
    assert method_options("lora-matched", "/s", 3) == ("all", (("lora_matched_to", "mid:3"),))


def test_compare_rank_by_refuses_what_it_cannot_rank(tiny_model_dirs, tmp_path):
    from onelayer.benchmarks.compare import parse_methods, plan_compare

    sweep, probe = _tiny_sweep_and_probe(tmp_path, tiny_model_dirs["qwen3"])
    other_model = _synthetic(tmp_path, "other", model="smollm2-135m")
    code = _synthetic(tmp_path, "code", domain="code", model=str(tiny_model_dirs["qwen3"]))
    for methods, rank_by, message in [
        ("full,only-top2", str(probe), "--methods lists none"),
        ("full,probe-only-top2", None, "probe-only-top2 rank the layers by a probe: pass --rank-by"),
        ("probe-only-top2", f"{probe}:nope", "has no method 'nope'"),
        ("probe-only-top5", str(probe), "ranks only 4 layers"),
        ("probe-boost-top1", str(other_model), "ranked the layers of smollm2-135m, the sweep trains"),
        ("probe-only-top1", str(code), "ranked the layers of domain 'code'"),
        ("probe-only-top1", str(tmp_path / "missing"), "does not exist"),
    ]:
        with pytest.raises(UserError, match=message):
            plan_compare(sweep, parse_methods(methods), seeds=[2], rank_by=rank_by, log=lambda m: None)
    with pytest.raises(UserError, match="unknown method 'probe-mid2'"):
        parse_methods("probe-mid2")


def test_compare_rank_by_trains_the_probes_layers_in_the_sweeps_directory(tiny_model_dirs, tmp_path):
    from typer.testing import CliRunner

    from onelayer.benchmarks.sweep_results import load_results
    from onelayer.cli import app

    sweep, probe = _tiny_sweep_and_probe(tmp_path, tiny_model_dirs["qwen3"])
    out = tmp_path / "cmp"
    args = ["compare", "--sweep", str(sweep), "--out", str(out), "--quiet", "--seeds", "2,", "--steps", "1"]
    res = CliRunner().invoke(app, [*args, "--methods", "only-top1,probe-only-top1", "--rank-by", f"{probe}:fisher"])
    assert res.exit_code == 0, res.output
    got = {r.job: r for r in load_results(out)}
    assert set(got) == {"math/base", "math/grpo/s2/only-top1", "math/grpo/s2/probe-only-top1"}

    def trained(method):
        return json.loads((Path(got[f"math/grpo/s2/{method}"].run_dir) / "config.json").read_text())["selection"]

    assert trained("only-top1")["layer_indices"] == [2] and trained("probe-only-top1")["layer_indices"] == [3]
    table = (out / "compare.md").read_text()
    assert "| probe-only-top1 |" in table and "| only-top1 |" in table
    assert f"probe-* methods: {probe.resolve()}:fisher" in table
    # The same directory takes full RL later; the record of what ranked its probe-* runs stays.
    res = CliRunner().invoke(app, [*args, "--methods", "full"])
    assert res.exit_code == 0, res.output
    assert "math/grpo/s2/full" in {r.job for r in load_results(out)}
    assert f"probe-* methods: {probe.resolve()}:fisher" in (out / "compare.md").read_text()
    # Another ranking would find probe-only-top1 done with the fisher layers: refused.
    res = CliRunner().invoke(app, [*args, "--methods", "probe-only-top1", "--rank-by", f"{probe}:skip"])
    assert res.exit_code == 2 and "holds probe-* runs ranked by" in res.output and "Traceback" not in res.output
