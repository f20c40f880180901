"""`onelayer export`: a run becomes a plain HF model directory that transformers alone loads, with exact tensors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import ARCHS

from onelayer.benchmarks.evaluate import load_run_model
from onelayer.benchmarks.export import EXPORT_FILE, export_run
from onelayer.errors import UserError
from onelayer.training import checkpoint as ckpt
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer

PROBE = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"


def tiny_run(model_dir, out, **kw) -> Path:
    """A one-step run of the tiny model (kw: TrainConfig overrides)."""
    base = dict(model=str(model_dir), out=str(out), steps=1, num_tasks=2, num_generations=4, max_new_tokens=6,
                eval_size=0, reward_funcs=["support_rewards:length_reward"], lr=1e-2, micro_batch_size=4, seed=0)
    base.update(kw)
    Trainer(TrainConfig(**base)).train(progress=False)
    return Path(out)


@pytest.fixture(scope="module")
def qwen3_run(tiny_model_dirs, tmp_path_factory) -> Path:
    """One tiny one-step run shared by the tests that only read it."""
    return tiny_run(tiny_model_dirs["qwen3"], tmp_path_factory.mktemp("shared") / "run", layers="1")


def load_plain(out: Path, dtype=torch.float32):
    """The export loaded with nothing but transformers; fails on any missing / unexpected / mismatched key."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, output_loading_info=True)
    assert all(not v for v in info.values()), info
    return model.eval(), AutoTokenizer.from_pretrained(out)


def logits(model, tok, text=PROBE):
    with torch.no_grad():
        return model(tok(text, return_tensors="pt")["input_ids"]).logits


def assert_tensors_exact(exported, run_dir: Path, base_state: dict, dtype=torch.float32):
    """Trained tensors bit-identical to trained.safetensors, every other tensor to the base model, all in ``dtype``."""
    trained = load_file(str(run_dir / ckpt.TRAINED_FILE))
    state = exported.state_dict()
    assert trained and set(trained) <= set(state)
    for name, t in state.items():
        want = trained[name] if name in trained else base_state[name]
        assert t.dtype == dtype, name
        assert torch.equal(t, want.to(dtype)), name
    assert set(state) == set(base_state)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_step_run_exports_to_a_plain_transformers_model(arch, tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tiny_run(tiny_model_dirs[arch], tmp_path / "run", layers="2")
    res = export_run(run, tmp_path / "merged")
    assert res.dtype == "float32" and res.out == tmp_path / "merged"

    exported, tok = load_plain(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], dtype=torch.float32).state_dict()
    assert_tensors_exact(exported, run, base)
    trained = load_file(str(run / ckpt.TRAINED_FILE))
    assert any(not torch.equal(trained[n], base[n]) for n in trained)  # the step moved the layer: the check has teeth
    run_model, run_tok, _ = load_run_model(run, device="cpu")
    assert torch.equal(logits(exported, tok), logits(run_model, run_tok))
    assert exported.lm_head.weight is exported.get_input_embeddings().weight  # tied, as the tiny models are
    assert tok.chat_template == run_tok.chat_template and tok.pad_token_id == run_tok.pad_token_id
    record = json.loads((tmp_path / "merged" / EXPORT_FILE).read_text())
    assert record["layers"] == "2" and record["trained_tensors"] == sorted(trained)


def test_export_in_bfloat16_matches_the_run_loaded_in_bfloat16(tiny_model_dirs, tmp_path):
    run = tiny_run(tiny_model_dirs["llama"], tmp_path / "run", layers="1")
    assert export_run(run, tmp_path / "merged", dtype="bfloat16").dtype == "bfloat16"
    exported, tok = load_plain(tmp_path / "merged", dtype=torch.bfloat16)
    run_model, _, _ = load_run_model(run, device="cpu", dtype="bfloat16")
    want = run_model.state_dict()
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, want[n]) for n, t in exported.state_dict().items())
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"


def test_run_with_an_inserted_identity_block_exports_with_one_more_layer(tiny_model_dirs, tmp_path):
    run = tiny_run(tiny_model_dirs["qwen3"], tmp_path / "run", layers="2",
                   insert_layer="onelayer.training.insert:identity_copy", insert_at=2)
    export_run(run, tmp_path / "merged")
    exported, tok = load_plain(tmp_path / "merged")
    assert exported.config.num_hidden_layers == 5 and len(exported.model.layers) == 5
    run_model, run_tok, _ = load_run_model(run, device="cpu")
    want = run_model.state_dict()
    assert all(torch.equal(t, want[n]) for n, t in exported.state_dict().items())
    assert torch.equal(logits(exported, tok), logits(run_model, run_tok))


def wider_block(model, at):
    """Insert-layer factory: a block of the model's own class whose MLP is twice as wide as the config says."""
    import copy

    from onelayer.training.insert import identity_copy

    block = identity_copy(model, at)
    cfg = copy.deepcopy(model.config)
    cfg.intermediate_size *= 2
    block.mlp = type(block.mlp)(cfg)
    with torch.no_grad():
        block.mlp.down_proj.weight.zero_()
    return block


def louder_block(model, at):
    """Insert-layer factory: the model's own block class and parameter names, but a forward that doubles its output."""
    from onelayer.training.insert import identity_copy

    block = identity_copy(model, at)
    forward = block.forward
    block.forward = lambda *args, **kwargs: forward(*args, **kwargs) * 2
    return block


@pytest.mark.parametrize("factory,needle", [("wider_block", "has shape"), ("louder_block", "logits differ")])
def test_run_with_a_custom_inserted_block_fails_in_one_line_and_writes_nothing(factory, needle, tiny_model_dirs, tmp_path):
    run = tiny_run(tiny_model_dirs["llama"], tmp_path / "run", layers="1",
                   insert_layer=f"test_export:{factory}", insert_at=1)
    with pytest.raises(UserError, match=needle) as e:
        export_run(run, tmp_path / "merged")
    assert "\n" not in str(e.value) and "cannot be represented as a plain" in str(e.value)
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left behind


def test_lora_run_exports_its_merged_adapters(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    d = tiny_model_dirs["qwen2"]
    run = tiny_run(d, tmp_path / "run", layers="1", lora_rank=2)
    export_run(run, tmp_path / "merged")
    exported, tok = load_plain(tmp_path / "merged")
    assert not any(".lora_" in n for n in exported.state_dict())
    run_model, run_tok, _ = load_run_model(run, device="cpu")
    want = run_model.state_dict()
    assert all(torch.equal(t, want[n]) for n, t in exported.state_dict().items())
    assert torch.equal(logits(exported, tok), logits(run_model, run_tok))
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    moved = {n for n, t in exported.state_dict().items() if not torch.equal(t, base[n])}
    assert moved and all(n.startswith("model.layers.1.") for n in moved)  # only the adapted block's weights


def test_exporting_again_replaces_a_previous_export(qwen3_run, tmp_path):
    run = qwen3_run
    export_run(run, tmp_path / "merged", dtype="bfloat16")
    export_run(run, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / EXPORT_FILE).read_text())["dtype"] == "float32"
    assert load_plain(tmp_path / "merged")[0].dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # the replaced export and temporary folders are gone


@pytest.mark.parametrize("make_out,needle", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "non-empty directory that is not an onelayer export"),
    (lambda p: p.write_text("a file"), "is not a directory"),
])
def test_out_that_is_not_ours_is_refused_before_loading_anything(make_out, needle, qwen3_run, tmp_path):
    run = qwen3_run
    out = tmp_path / "out"
    make_out(out)
    before = {p.name: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())}
    with pytest.raises(UserError, match=needle):
        export_run(run, out)
    assert before == {p.name: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())}


def test_damaged_trained_file_is_a_one_line_error(qwen3_run, tmp_path):
    import shutil

    run = Path(shutil.copytree(qwen3_run, tmp_path / "run"))
    data = (run / ckpt.TRAINED_FILE).read_bytes()
    (run / ckpt.TRAINED_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is damaged"):
        export_run(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def run_cli(*args):
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-m", "onelayer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.mark.parametrize("make_run,needle", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is not a onelayer run directory"),
])
def test_cli_export_of_a_missing_run_is_one_line_exit_2(make_run, needle, tmp_path):
    run = tmp_path / "run"
    make_run(run)
    r = run_cli("export", run, "--out", tmp_path / "merged")
    assert r.returncode == 2 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_default_gguf_model_one_step_run_exports_through_the_cli(tmp_path):
    """smollm2-135m is a GGUF file: save_pretrained refused it (`quantized with gguf and is not serializable`)."""
    from onelayer.agents.models import load_model

    run, out = tmp_path / "run", tmp_path / "merged"
    r = run_cli("train", "--layers", "15", "--steps", "1", "--num-tasks", "2", "--num-generations", "2",
                "--max-new-tokens", "4", "--eval-size", "0", "--lr", "1e-3", "--out", run, "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("export", run, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote merged model (float32" in r.stdout

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    exported, tok = load_plain(out)
    assert exported.lm_head.weight is exported.get_input_embeddings().weight
    base, base_tok, _ = load_model("smollm2-135m", device="cpu")
    assert_tensors_exact(exported, run, base.state_dict())
    assert tok.chat_template == base_tok.chat_template and tok(PROBE)["input_ids"] == base_tok(PROBE)["input_ids"]
    del base
    run_model, run_tok, _ = load_run_model(run, device="cpu")
    assert torch.equal(logits(exported, tok), logits(run_model, run_tok))
