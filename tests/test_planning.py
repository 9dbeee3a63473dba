"""The VRAM planner against the real model classes, real bitsandbytes 4-bit layers and real PEFT, and the GPU
benchmark script's CPU path."""

import json
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoConfig, LlamaForCausalLM, LlamaModel

from bt_peft import MemoryPlan, load_qlora_model, plan_memory
from bt_peft.training.planning import (
    FP32,
    LORA_DROPOUT_MASK,
    PRESETS,
    activation_bytes,
    layer_activation_bytes_per_token,
    model_shape,
    resolve_config,
)
from bt_peft.quantization import load_reward_model, nf4_config

from conftest import build_tokenizer, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]


def test_llama3_8b_parameter_counts_match_the_real_class_on_the_meta_device():
    config = resolve_config("llama-3-8b")
    shape = model_shape(config)
    with torch.device("meta"):
        body = LlamaModel(config)  # the decoder without any head
    assert sum(shape.quantized) + shape.unquantized_params == sum(p.numel() for p in body.parameters())
    assert round((sum(shape.quantized) + shape.unquantized_params) / 1e9, 2) == 7.50
    h, kv, i, layers = 4096, 1024, 14336, 32
    assert sum(shape.quantized) == layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    assert shape.unquantized_params == 128256 * h + (2 * layers + 1) * h  # embeddings and RMSNorms stay 16-bit
    assert shape.head_params == 2 * h
    assert shape.lora_params == layers * 16 * ((h + h) + 2 * (h + kv) + (h + h))  # r16 on q, k, v, o


def test_qwen_biases_stay_unquantized():
    shape = model_shape(resolve_config("qwen2.5-7b"))
    h, kv, layers = 3584, 512, 28
    assert shape.unquantized_params == 152064 * h + (2 * layers + 1) * h + layers * (h + 2 * kv)


def test_issue_floor_for_llama3_8b():
    """The issue's floor: 4.33 GiB of weights (NF4 + 16-bit embeddings) and 0.2 GiB of LoRA with grads and Adam."""
    plan = plan_memory("llama-3-8b")
    assert round((plan.nf4 + plan.unquantized) / 2**30, 2) == 4.33
    assert round((plan.lora_weights + plan.lora_gradients + plan.lora_optimizer) / 2**30, 1) == 0.2


def test_quantized_split_and_nf4_bytes_match_a_real_4bit_model(tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    shape = model_shape(config)
    model = load_reward_model(tiny_llama_dir, nf4_config(torch.float32))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    storages = {}
    for layer in layers:
        state = layer.weight.quant_state
        for tensor in (layer.weight.data, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    assert sorted(math.prod(layer.weight.quant_state.shape) for layer in layers) == sorted(shape.quantized)
    assert sum(storages.values()) == shape.nf4_bytes
    others = [p for n, p in model.named_parameters() if not isinstance(p, bnb.nn.Params4bit) and not n.startswith("score.")]
    assert sum(p.numel() for p in others) == shape.unquantized_params
    assert model.score.weight.numel() == shape.head_params


def test_lora_count_matches_a_real_peft_model(tiny_llama_dir):
    shape = model_shape(AutoConfig.from_pretrained(tiny_llama_dir), lora_r=8)
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, lora_r=8)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == shape.lora_params + shape.head_params  # adapters + the trainable head copy
    assert model_shape(AutoConfig.from_pretrained(tiny_llama_dir), lora_r=8, lora_targets=["v_proj"]).lora_params == 2 * 8 * (64 + 32)


def test_layer_activation_model_matches_what_autograd_saves(tiny_llama_dir):
    """Bytes autograd saves inside the second decoder layer of a real 4-bit + LoRA model in a bf16 autocast
    training forward (padded batch, SDPA), against the planner's per-layer model. On the CPU a dropout mask is
    stored in the input dtype (fp32 after PEFT's cast) where CUDA stores bool; that difference is added."""
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.bfloat16, gradient_checkpointing=False,
                                attn_implementation="sdpa")
    model.enable_input_require_grads()  # every layer's input requires grad, as under gradient checkpointing
    model.train()
    shape = model_shape(model.config)
    sequences, length = 2, 48
    input_ids = torch.randint(5, 300, (sequences, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0
    input_ids[1, :7] = model.config.pad_token_id  # left padding, as the tokenizer pads

    decoder_layers = model.base_model.model.model.layers
    current, saved = [None], {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for index, layer in enumerate(decoder_layers):
        layer.register_forward_pre_hook(lambda module, args, index=index: current.__setitem__(0, index))
        layer.register_forward_hook(lambda module, args, output: current.__setitem__(0, None))

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if current[0] == 1 and ptr not in params:
            saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    tokens, c = sequences * length, 2
    expected = (
        tokens * layer_activation_bytes_per_token(shape, c)
        + sequences * c * length**2  # the padded batch's attention bias
        + c * shape.lora_params // shape.num_layers  # LoRA weights cast by autocast
        + tokens * (FP32 - LORA_DROPOUT_MASK) * shape.lora_inputs_per_layer  # CPU dropout masks are fp32
    )
    assert sum(saved.values()) == pytest.approx(expected, rel=0.01)


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive (tensor accounting on a CPU)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.storages = 0, 0, set()

    def _release(self, key: int, size: int) -> None:
        self.storages.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if key and key not in self.storages:
                    self.storages.add(key)
                    self.live += size
                    weakref.finalize(tensor if tensor._base is None else tensor._base, self._release, key, size)
        self.peak = max(self.peak, self.live)
        return out


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_activation_estimate_matches_the_peak_of_a_training_step(tmp_path, gradient_checkpointing):
    """The peak of the tensors a real training step (bf16 autocast forward, backward, AdamW step) creates, against
    `activation_bytes` plus the LoRA and head gradients. Without checkpointing the estimate is close; with it, an
    upper bound (recomputed tensors are freed as the backward consumes them)."""
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), hidden_size=256, intermediate_size=768, num_attention_heads=8,
                               num_hidden_layers=4)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_qlora_model(tmp_path, compute_dtype=torch.bfloat16, gradient_checkpointing=gradient_checkpointing,
                                attn_implementation="sdpa")
    model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sequences, length = 4, 128
    input_ids = torch.randint(5, 300, (sequences, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :9] = 0
    input_ids[1, :9] = model.config.pad_token_id  # left padding, as the tokenizer pads

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits.float()[:, 1].sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # Adam states exist from here on, as in the planned steady state
    with PeakTensorBytes() as tracker:
        step()
    shape = model_shape(model.config)
    layers_held = 1 if gradient_checkpointing else shape.num_layers
    cpu_dropout_masks = layers_held * sequences * length * (FP32 - LORA_DROPOUT_MASK) * shape.lora_inputs_per_layer
    expected = (activation_bytes(shape, sequences, length, gradient_checkpointing, 2) + cpu_dropout_masks
                + FP32 * (shape.lora_params + shape.head_params))
    ratio = tracker.peak / expected
    assert (0.95 <= ratio <= 1.05) if not gradient_checkpointing else (0.6 <= ratio <= 1.0), ratio  # measured: 0.98 and 0.73


def test_more_tokens_cost_more_and_checkpointing_and_packing_save():
    plan = plan_memory("mistral-7b", pair_length=512)
    longer, larger = plan.replan(1, 1024), plan.replan(2, 512)
    assert plan.activations < longer.activations and plan.activations < larger.activations
    assert plan.nf4 == longer.nf4 and plan.lora_optimizer == larger.lora_optimizer
    unchecked = plan_memory("mistral-7b", pair_length=512, gradient_checkpointing=False)
    assert unchecked.activations > 4 * plan.activations
    unpacked = plan_memory("mistral-7b", pair_length=512, packing=False)
    assert unpacked.activations > plan.activations
    assert plan_memory("mistral-7b", pair_length=512, compute_dtype=torch.float32).unquantized == 2 * plan.unquantized


def test_fits_and_suggest_agree():
    plan = plan_memory("llama-3-8b", pair_length=1024)
    assert plan.fits(plan.total / 2**30) and not plan.fits(plan.total / 2**30 - 0.01)
    for gpu_gb in (8, 24):
        batch, length = plan.suggest(gpu_gb)
        assert length == 1024 and batch >= 1
        assert plan.replan(batch, length).fits(gpu_gb) and not plan.replan(batch + 1, length).fits(gpu_gb)
    batch, length = plan_memory("llama-3-8b", pair_length=8192, packing=False, gradient_checkpointing=False).suggest(12)
    long_plan = plan_memory("llama-3-8b", packing=False, gradient_checkpointing=False)
    assert batch == 1 and length < 8192 and length % 64 == 0
    assert long_plan.replan(1, length).fits(12) and not long_plan.replan(1, length + 64).fits(12)
    assert plan.suggest(4) is None  # the weights alone do not fit


def test_report_lists_components_and_verdicts():
    plan = plan_memory("llama-3-8b", gpu_gb=10)
    text = plan.report()
    assert isinstance(plan, MemoryPlan)
    assert "NF4 weights, double quant" in text and f"{plan.total / 2**30:.2f}" in text
    for gpu_gb in (8, 10, 12, 16, 24, 80):
        batch, length = plan.suggest(gpu_gb)
        assert f"{gpu_gb:>5g} GB GPU: fits          largest: batch {batch} at {length:,} tokens" in text
    assert "   4 GB GPU" not in text
    assert "does not fit  nothing fits" in plan_memory("llama-3-8b", gpu_gb=4).report()


def test_presets_and_config_paths(tmp_path):
    assert set(PRESETS) == {"llama-3-8b", "mistral-7b", "qwen2.5-7b"}
    for name, model_type in (("llama-3-8b", "llama"), ("mistral-7b", "mistral"), ("qwen2.5-7b", "qwen2")):
        assert plan_memory(name).shape.model_type == model_type
    by_file = plan_memory(PRESETS["llama-3-8b"])
    resolve_config("llama-3-8b").save_pretrained(tmp_path)
    assert plan_memory(tmp_path).total == by_file.total == plan_memory(resolve_config("llama-3-8b")).total


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="neither a preset .*llama-3-8b, mistral-7b, qwen2.5-7b"):
        plan_memory("llama-3-70b")
    with pytest.raises(ValueError, match="batch_size and pair_length must be positive"):
        plan_memory("mistral-7b", batch_size=0)
    with pytest.raises(ValueError, match="prompt_fraction"):
        plan_memory("mistral-7b", prompt_fraction=1.0)
    with pytest.raises(ValueError, match="compute_dtype"):
        plan_memory("mistral-7b", compute_dtype="bfloat17")
    with pytest.raises(ValueError, match="lora_r must be positive"):
        plan_memory("mistral-7b", lora_r=0)
    with pytest.raises(ValueError, match="matches the LoRA targets"):
        plan_memory("mistral-7b", lora_targets=["query"])


def test_gpu_benchmark_runs_its_code_path_on_a_tiny_shape(tmp_path):
    output = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_memory.py"), "--tiny", "--steps", "2",
                          "--lengths", "32", "48", "--workdir", str(tmp_path), "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(output.read_text())["results"]
    # each length in both layouts, each planned as it is trained (issue 20 item 5)
    assert [(r["pair_length"], r["layout"]) for r in results] == [(32, "packed"), (32, "padded"), (48, "packed"),
                                                                   (48, "padded")]
    assert all(r["peak_gib"] is None and r["pairs_per_second"] > 0 and math.isfinite(r["final_loss"]) for r in results)
    for layout in ("packed", "padded"):
        short, long = (r["plan_peak_gib"] for r in results if r["layout"] == layout)
        assert 0 < short < long
    assert "bt-peft GPU memory benchmark: tiny Llama" in run.stdout
    assert not any(tmp_path.glob("bt-peft-gpu-memory-*"))  # the random checkpoint is removed


def test_gpu_benchmark_refuses_the_full_shape_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_memory.py")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2
    assert "needs an NVIDIA GPU with CUDA" in run.stderr and "--tiny" in run.stderr
