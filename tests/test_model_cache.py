"""The dequantized default model is cached as a plain HF folder and loads back bit for bit."""

from __future__ import annotations

import torch

from onelayer.agents.models import load_model, load_tokenizer, plain_copy_dir, resolve_model


def test_gguf_loads_once_then_from_the_plain_copy_with_identical_tensors_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("ONELAYER_CACHE", str(tmp_path / "cache"))
    source = resolve_model("smollm2-135m")
    folder = plain_copy_dir(source)
    assert folder is not None and folder.is_relative_to(tmp_path / "cache") and not folder.exists()
    first, tok_first, _ = load_model("smollm2-135m", "cpu")  # dequantizes the GGUF file, keeps the copy
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    again, tok_again, _ = load_model("smollm2-135m", "cpu")
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert getattr(again, "hf_quantizer", None) is None  # a plain model: export and save_pretrained just work
    text = [{"role": "user", "content": "What is 17 + 25?"}]
    assert tok_again.apply_chat_template(text, tokenize=False) == tok_first.apply_chat_template(text, tokenize=False)
    assert tok_again("Hello, world 123")["input_ids"] == tok_first("Hello, world 123")["input_ids"]
    assert tok_again.eos_token_id == tok_first.eos_token_id and tok_again.pad_token_id == tok_first.pad_token_id
    ids = torch.tensor([tok_first("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, again(ids).logits)
    bf16, _, _ = load_model("smollm2-135m", "cpu", "bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_the_cache_can_be_turned_off_and_an_unwritable_cache_only_costs_speed(tmp_path, monkeypatch, capsys):
    source = resolve_model("smollm2-135m")
    monkeypatch.setenv("ONELAYER_GGUF_CACHE", "0")
    assert plain_copy_dir(source) is None
    monkeypatch.delenv("ONELAYER_GGUF_CACHE")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ONELAYER_CACHE", str(blocker))
    model, tok, _ = load_model("smollm2-135m", "cpu")
    assert "not caching the dequantized" in capsys.readouterr().err
    assert model.config.num_hidden_layers == 30 and load_tokenizer(source).eos_token_id == tok.eos_token_id
