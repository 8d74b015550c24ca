"""The inner model loads like the policy (issue 30): model_init_kwargs, trust_remote_code, revision,
attn_implementation and dtype reach its from_pretrained; under ZeRO-3 it loads whole through transformers' public
switches."""

import pytest
import torch

from seal_trl.trainer import SEALTrainer, _unsharded_loading

from test_trainer import dataset, tiny_args  # noqa: F401  (the fixture too)


def test_the_policy_loading_kwargs_reach_the_inner_models_from_pretrained(tiny_model_dir, tiny_tokenizer, dataset,
                                                                          tmp_path, monkeypatch):
    from transformers import AutoConfig
    import transformers

    architecture = getattr(transformers, AutoConfig.from_pretrained(tiny_model_dir).architectures[0])
    original = architecture.from_pretrained.__func__
    calls = []

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(architecture, "from_pretrained", classmethod(spy))
    init = {"revision": "main", "attn_implementation": "eager", "dtype": "bfloat16", "low_cpu_mem_usage": True,
            "device_map": "cpu"}
    args = tiny_args(tmp_path, model_init_kwargs=init, trust_remote_code=True)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    assert len(calls) == 2  # the policy, then the inner model
    inner = calls[1]
    assert inner["revision"] == "main" and inner["attn_implementation"] == "eager"
    assert inner["dtype"] == torch.bfloat16 and inner["trust_remote_code"] is True and inner["low_cpu_mem_usage"]
    assert inner["device_map"] is None and "quantization_config" not in inner  # placement and 4-bit: the inner's own
    model = trainer.inner_loop.model.get_base_model()
    assert next(model.parameters()).dtype == torch.bfloat16 and model.config._attn_implementation == "eager"


def test_without_a_dtype_the_inner_model_takes_the_mixed_precision_dtype(tiny_model_dir, tiny_tokenizer, dataset,
                                                                        tmp_path):
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path), train_dataset=dataset,
                          processing_class=tiny_tokenizer)
    assert trainer._inner_model_kwargs(torch.float16) == {"trust_remote_code": False, "dtype": torch.float16}
    assert next(trainer.inner_loop.model.parameters()).dtype == torch.float32  # fp32 on CPU


def test_zero3_is_switched_off_while_the_inner_model_loads_and_back_on_after():
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    holder = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        with _unsharded_loading(holder):
            assert not is_deepspeed_zero3_enabled()
        assert is_deepspeed_zero3_enabled()
        with pytest.raises(RuntimeError, match="HfDeepSpeedConfig was not found"), _unsharded_loading(None):
            pass
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
    with _unsharded_loading(None):  # without ZeRO-3: nothing to switch
        assert not is_deepspeed_zero3_enabled()
