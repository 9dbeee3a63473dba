"""Plan the GPU memory of QLoRA Bradley-Terry training from a model's config alone (no weights are loaded).

    from bt_peft import plan_memory
    print(plan_memory("llama-3-8b", batch_size=1, pair_length=1024).report())

Parameters are counted on a model built on the meta device; each component is then sized as `load_qlora_model`
and `BradleyTerryRewardTrainer` hold it. What is exact and what is estimated:

- **Exact** (from the real model class): the NF4 weights, derived from bitsandbytes' scheme (`quantize_4bit` with
  `compress_statistics=True`): per quantized `nn.Linear` of `n` weights, `ceil(n / 2)` bytes of packed 4-bit
  values, `ceil(n / 64)` bytes of 8-bit absmax (blocksize 64), whose second level holds one fp32 absmax per 256
  of them, plus constant tensors (the 16-value NF4 code, the 256-value 8-bit code, the fp32 offset); the
  parameters that stay in the compute dtype (embeddings, norms, biases); the fp32 score head (kept with a
  trainable copy, its gradient and Adam state); the LoRA weights, gradients and Adam states, all fp32.
- **Estimated** (a per-token model of what autograd saves, written for Llama-style decoders: RMSNorm, gated MLP,
  SDPA attention, LoRA with dropout, bf16 autocast): the activations. It matches the tensors autograd saves for
  one layer on a CPU run to within 1 %, and the peak of a whole CPU training step to 98 % (73 % with gradient
  checkpointing, where it is an upper bound; see tests/test_planning.py); on a GPU, SDPA's memory-efficient kernel keeps
  no T x T scores, but a padded batch adds one T x T attention bias per sequence and layer. The backward working
  set (the gradient flowing back, one dequantized 4-bit weight) and the allocator's rounding are approximate: the
  aim is the peak that `torch.cuda.max_memory_allocated` reports within about 10 % of `peak_allocated`, not yet
  confirmed on a GPU (`benchmarks/gpu_memory.py` measures it).
- `CUDA_CONTEXT_BYTES`, a stated constant, stands for what `max_memory_allocated` does not see (CUDA context,
  cuBLAS workspaces, allocator fragmentation); `fits` compares `total` (peak + that constant) with the card.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from ..modeling import AutoModelForBradleyTerry, head_of, meta_device, module_matches
from .qlora import lora_targets as default_lora_targets

PRESET_DIR = Path(__file__).parents[1] / "presets"
PRESETS = {path.stem: path for path in sorted(PRESET_DIR.glob("*.json"))}
"""Bundled configs by name: `llama-3-8b` (Meta-Llama-3-8B), `mistral-7b` (Mistral-7B-v0.3), `qwen2.5-7b`."""

GPU_SIZES_GB = (8, 12, 16, 24, 80)
"""Cards the report gives a verdict for, in GiB as `nvidia-smi` counts them (an "8 GB" card has 8,192 MiB)."""

CUDA_CONTEXT_BYTES = 512 * 2**20
"""CUDA context, cuBLAS/cuDNN workspaces and allocator slack: 0.5 GiB (a CUDA 12 context with lazy module
loading takes 300-450 MiB; cuBLAS workspaces 8-32 MiB per stream; the rest is headroom for fragmentation)."""

NF4_BLOCKSIZE = 64
ABSMAX_BLOCKSIZE = 256
NF4_CONSTANT_BYTES = 4 * (16 + 256 + 1)
"""Per quantized layer: the fp32 NF4 code (16 values), the 8-bit absmax code (256 values) and the absmax offset."""

ADAM_STATES = 2
FP32 = 4
LORA_DROPOUT_MASK = 1
"""Bytes per element of a dropout mask on CUDA (bool); the planner assumes LoRA dropout > 0 (the default 0.05)."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model, counted on the meta device.

    Fields:
        model_type (`str`), num_layers, hidden_size, intermediate_size, num_heads (`int`): from the config.
        attention_dim (`int`): query width, `num_heads * head_dim`.
        quantized (`tuple[int, ...]`): weight count of each `nn.Linear` bitsandbytes turns into NF4.
        unquantized_params (`int`): parameters kept in the compute dtype (embeddings, norms, biases).
        head_params (`int`): parameters of the 2-label score head (fp32, trainable).
        lora_params (`int`): LoRA parameters, `r * (in + out)` summed over the targeted linears.
        lora_inputs_per_layer (`int`): sum of the targets' input widths in one decoder layer.
        lora_targets (`tuple[str, ...]`), lora_r (`int`): the LoRA set-up counted.
    """

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    attention_dim: int
    quantized: tuple[int, ...]
    unquantized_params: int
    head_params: int
    lora_params: int
    lora_inputs_per_layer: int
    lora_targets: tuple[str, ...]
    lora_r: int

    @property
    def nf4_bytes(self) -> int:
        """Bytes bitsandbytes allocates for the NF4 weights with double quant, constants included."""
        total = 0
        for n in self.quantized:
            blocks = math.ceil(n / NF4_BLOCKSIZE)
            total += math.ceil(n / 2) + blocks + FP32 * math.ceil(blocks / ABSMAX_BLOCKSIZE) + NF4_CONSTANT_BYTES
        return total


def resolve_config(config: str | os.PathLike | PretrainedConfig) -> PretrainedConfig:
    """A config from a preset name, a `config.json` file, a checkpoint directory, or a config object.

    Raises:
        `ValueError`: `config` is neither a preset nor an existing path; the message lists the presets.
    """
    if isinstance(config, PretrainedConfig):
        return config
    if str(config) in PRESETS:
        return AutoConfig.from_pretrained(PRESETS[str(config)])
    if Path(config).exists():
        return AutoConfig.from_pretrained(config)
    raise ValueError(f"{str(config)!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json file or checkpoint directory")


def model_shape(config: PretrainedConfig, lora_r: int = 16, lora_targets: list[str] | None = None) -> ModelShape:
    """Count the parameters of the 2-label reward model of `config` as `load_qlora_model` would load it.

    Args:
        config (`PretrainedConfig`): a decoder config (Llama, Mistral, Qwen2, …).
        lora_r (`int`): LoRA rank.
        lora_targets (`list[str]`, *optional*): LoRA target names; default: the architecture's attention
            projections (`training.qlora.lora_targets`).

    Returns:
        `ModelShape`: every `nn.Linear` except the head (and the class's `_keep_in_fp32_modules`) is counted as
        NF4, as bitsandbytes quantizes it; every other parameter but the head stays in the compute dtype.
    """
    if lora_r < 1:
        raise ValueError(f"lora_r must be positive, got {lora_r}")
    with meta_device():
        model = AutoModelForBradleyTerry.from_config(config)
    head = head_of(model)
    targets = list(lora_targets or default_lora_targets(model.config))
    kept = [head, *(getattr(model, "_keep_in_fp32_modules", None) or [])]
    quantized, lora_params, lora_inputs = [], 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module_matches(name, kept):
            continue
        quantized.append(module.weight.numel())
        if module_matches(name, targets):
            lora_params += lora_r * (module.in_features + module.out_features)
            lora_inputs += module.in_features
    if lora_params == 0:
        raise ValueError(f"no linear layer of {type(model).__name__} matches the LoRA targets {targets}")
    head_params = sum(p.numel() for p in getattr(model, head).parameters())
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return ModelShape(
        model_type=text.model_type,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_heads=text.num_attention_heads,
        attention_dim=text.num_attention_heads * head_dim,
        quantized=tuple(quantized),
        unquantized_params=sum(p.numel() for p in model.parameters()) - sum(quantized) - head_params,
        head_params=head_params,
        lora_params=lora_params,
        lora_inputs_per_layer=lora_inputs // text.num_hidden_layers,
        lora_targets=tuple(targets),
        lora_r=lora_r,
    )


def layer_activation_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """Bytes autograd saves per token in one decoder layer (training mode, LoRA dropout on, frozen base).

    Per token: 2 RMSNorms keep their fp32 input and rsqrt (4h + 4 each); each LoRA target keeps its dropout mask
    (1 byte per input) and the dropout output in the compute dtype (the `lora_A` input) and the `lora_A` output
    (r values); SDPA keeps q, k, v (k/v repeated to all heads) and its output (4 x attention_dim) and an fp32
    log-sum-exp per head; the gated MLP keeps gate, SiLU(gate) and up (3 x intermediate). The 4-bit base layers
    keep only their packed weight (bitsandbytes' `MatMul4Bit` saves no input).
    """
    h, c = shape.hidden_size, dtype_bytes
    norms = 2 * (FP32 * h + FP32)
    targets_per_layer = len(shape.lora_targets)
    lora = (LORA_DROPOUT_MASK + c) * shape.lora_inputs_per_layer + c * shape.lora_r * targets_per_layer
    attention = 4 * c * shape.attention_dim + FP32 * shape.num_heads
    mlp = 3 * c * shape.intermediate_size
    return norms + lora + attention + mlp


def activation_bytes(
    shape: ModelShape, sequences: int, sequence_length: int, gradient_checkpointing: bool, dtype_bytes: int
) -> int:
    """Peak activation bytes of one training step on `sequences` padded sequences of `sequence_length` tokens.

    The peak comes in the backward. Without gradient checkpointing every layer holds its full activations (plus
    the padded batch's T x T attention bias per sequence and the LoRA weights cast to the compute dtype); with
    it each layer holds only its input (h values per token) and one layer at a time is recomputed in full, an
    upper bound (the recomputed tensors are freed as the backward consumes them). On top: the gradient flowing
    back (h values per token) and one 4-bit weight dequantized
    to the compute dtype. The head's activations (final norm, fp32 head input) are freed before the layers'
    backward starts and are not counted. Measured against the tensors a real CPU training step keeps alive
    (4 layers, 4 x 128 tokens, tests/test_planning.py): 98 % of the estimate without checkpointing, 73 % with.
    """
    c, tokens = dtype_bytes, sequences * sequence_length
    layer = (
        tokens * layer_activation_bytes_per_token(shape, c)
        + sequences * c * sequence_length**2
        + c * shape.lora_params // shape.num_layers
    )
    held = layer + shape.num_layers * tokens * c * shape.hidden_size if gradient_checkpointing else shape.num_layers * layer
    return held + tokens * c * shape.hidden_size + c * max(shape.quantized)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated GPU memory of QLoRA Bradley-Terry training, each component in bytes.

    Fields:
        shape (`ModelShape`): the counted model.
        batch_size (`int`): pairs per device step; pair_length (`int`): tokens per sequence (prompt + one reply,
            `RewardConfig.max_length`); packing (`bool`), prompt_fraction (`float`), gradient_checkpointing
            (`bool`), compute_dtype (`torch.dtype`): the settings planned for.
        nf4, unquantized, head, lora_weights, lora_gradients, lora_optimizer, activations (`int`): bytes.
        overhead (`int`): `CUDA_CONTEXT_BYTES`.
        gpu_gb (`float`, *optional*): a card to give a verdict for in `report` besides `GPU_SIZES_GB`.
    """

    shape: ModelShape
    batch_size: int
    pair_length: int
    packing: bool
    prompt_fraction: float
    gradient_checkpointing: bool
    compute_dtype: torch.dtype
    nf4: int
    unquantized: int
    head: int
    lora_weights: int
    lora_gradients: int
    lora_optimizer: int
    activations: int
    overhead: int = CUDA_CONTEXT_BYTES
    gpu_gb: float | None = None

    @property
    def peak_allocated(self) -> int:
        """Estimated peak of `torch.cuda.max_memory_allocated` over a training step (all but `overhead`)."""
        return self.nf4 + self.unquantized + self.head + self.lora_weights + self.lora_gradients + self.lora_optimizer + self.activations

    @property
    def total(self) -> int:
        """Bytes the card must hold: `peak_allocated + overhead`."""
        return self.peak_allocated + self.overhead

    def fits(self, gpu_gb: float) -> bool:
        """Whether `total` fits a card of `gpu_gb` GiB."""
        return self.total <= gpu_gb * 2**30

    def replan(self, batch_size: int, pair_length: int) -> MemoryPlan:
        """The same plan for another batch size and pair length."""
        plan = estimate(self.shape, batch_size, pair_length, self.packing, self.prompt_fraction,
                        self.gradient_checkpointing, self.compute_dtype)
        return dataclasses.replace(plan, gpu_gb=self.gpu_gb)

    def suggest(self, gpu_gb: float, max_batch_size: int = 1024, step: int = 64) -> tuple[int, int] | None:
        """The largest setting that fits a card of `gpu_gb` GiB.

        Returns:
            `(batch_size, pair_length)`: the largest batch at this plan's pair length; when not even batch 1
            fits, batch 1 at the longest pair length (a multiple of `step`) below this one; `None` when nothing
            fits (the weights alone are too big).
        """
        if self.replan(1, self.pair_length).fits(gpu_gb):
            return _largest(lambda b: self.replan(b, self.pair_length).fits(gpu_gb), 1, max_batch_size), self.pair_length
        if not self.replan(1, step).fits(gpu_gb):
            return None
        steps = _largest(lambda k: self.replan(1, k * step).fits(gpu_gb), 1, self.pair_length // step)
        return 1, steps * step

    def report(self) -> str:
        """Readable text: the settings, a table of components in GiB, and a verdict and suggestion for each card of
        `GPU_SIZES_GB` and `gpu_gb`."""
        s = self.shape
        gpu_sizes_gb = sorted({*GPU_SIZES_GB, *([self.gpu_gb] if self.gpu_gb else [])})
        sequences, length = sequence_geometry(self.batch_size, self.pair_length, self.packing, self.prompt_fraction)
        dtype = str(self.compute_dtype).removeprefix("torch.")
        lines = [
            f"QLoRA Bradley-Terry training of a {s.model_type} model ({s.num_layers} layers, hidden {s.hidden_size}), "
            f"{dtype} compute",
            f"batch {self.batch_size} pairs of {self.pair_length:,} tokens per sequence, packing "
            + (f"on ({sequences} x {length:,} tokens, prompt {self.prompt_fraction:.0%})" if self.packing else f"off ({sequences} x {length:,} tokens)"),
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, LoRA r{s.lora_r} on {', '.join(s.lora_targets)}",
            "",
            f"{'component':<48}{'parameters':>15}{'GiB':>9}",
        ]
        rows = [
            ("NF4 weights, double quant", sum(s.quantized), self.nf4),
            (f"{dtype} embeddings, norms, biases", s.unquantized_params, self.unquantized),
            ("fp32 score head (+ saved copy, grad, Adam)", s.head_params, self.head),
            ("LoRA weights (fp32)", s.lora_params, self.lora_weights),
            ("LoRA gradients (fp32)", None, self.lora_gradients),
            ("LoRA Adam states (fp32)", None, self.lora_optimizer),
            ("activations and backward buffers (estimate)", None, self.activations),
            ("= peak allocated (cuda.max_memory_allocated)", None, self.peak_allocated),
            ("+ CUDA context, workspaces, slack (constant)", None, self.overhead),
            ("= total", None, self.total),
        ]
        for name, params, size in rows:
            lines.append(f"{name:<48}{'' if params is None else f'{params:,}':>15}{size / 2**30:>9.2f}")
        lines.append("")
        for gb in gpu_sizes_gb:
            best = self.suggest(gb)
            verdict = "fits" if self.fits(gb) else "does not fit"
            advice = "nothing fits" if best is None else f"largest: batch {best[0]} at {best[1]:,} tokens"
            lines.append(f"{gb:>5g} GB GPU: {verdict:<13} {advice}")
        return "\n".join(lines)


def _largest(ok, low: int, high: int) -> int:
    """Largest `k` in `[low, high]` with `ok(k)`, given `ok(low)` and `ok` monotonic (True then False)."""
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if ok(middle) else (low, middle - 1)
    return low


def sequence_geometry(batch_size: int, pair_length: int, packing: bool, prompt_fraction: float) -> tuple[int, int]:
    """`(sequences, tokens per sequence)` of one step: unpacked, chosen and rejected are 2 sequences of
    `pair_length` each (padded to the longest); packed, one sequence `prompt + chosen + rejected` of
    `(2 - prompt_fraction) * pair_length` tokens per pair."""
    if packing:
        return batch_size, math.ceil((2 - prompt_fraction) * pair_length)
    return 2 * batch_size, pair_length


def estimate(
    shape: ModelShape,
    batch_size: int,
    pair_length: int,
    packing: bool,
    prompt_fraction: float,
    gradient_checkpointing: bool,
    compute_dtype: torch.dtype,
) -> MemoryPlan:
    """The `MemoryPlan` of `shape` under these settings (see `plan_memory` for their meaning)."""
    if batch_size < 1 or pair_length < 1:
        raise ValueError(f"batch_size and pair_length must be positive, got {batch_size} and {pair_length}")
    if not 0 <= prompt_fraction < 1:
        raise ValueError(f"prompt_fraction must be in [0, 1), got {prompt_fraction}")
    c = torch.finfo(compute_dtype).bits // 8
    sequences, length = sequence_geometry(batch_size, pair_length, packing, prompt_fraction)
    return MemoryPlan(
        shape=shape,
        batch_size=batch_size,
        pair_length=pair_length,
        packing=packing,
        prompt_fraction=prompt_fraction,
        gradient_checkpointing=gradient_checkpointing,
        compute_dtype=compute_dtype,
        nf4=shape.nf4_bytes,
        unquantized=c * shape.unquantized_params,
        head=FP32 * (2 + 1 + ADAM_STATES) * shape.head_params,
        lora_weights=FP32 * shape.lora_params,
        lora_gradients=FP32 * shape.lora_params,
        lora_optimizer=FP32 * ADAM_STATES * shape.lora_params,
        activations=activation_bytes(shape, sequences, length, gradient_checkpointing, c),
    )


def plan_memory(
    config: str | os.PathLike | PretrainedConfig,
    *,
    batch_size: int = 1,
    pair_length: int = 1024,
    packing: bool = True,
    prompt_fraction: float = 0.5,
    gradient_checkpointing: bool = True,
    lora_r: int = 16,
    lora_targets: list[str] | None = None,
    compute_dtype: str | torch.dtype = "bfloat16",
    gpu_gb: float | None = None,
) -> MemoryPlan:
    """Estimate the peak GPU memory of QLoRA Bradley-Terry training (`load_qlora_model` + the trainer).

    Args:
        config: a preset name (`PRESETS`: `llama-3-8b`, `mistral-7b`, `qwen2.5-7b`), a `config.json` file, a
            checkpoint directory, or a `PretrainedConfig`. Only the config is read.
        batch_size (`int`): pairs per device step (`per_device_train_batch_size`).
        pair_length (`int`): tokens of one side of a pair, prompt + reply (`max_length`); the planner assumes
            the longest pair of a batch reaches it.
        packing (`bool`): a pair is one sequence `prompt + chosen + rejected` (shared prefix) instead of two.
        prompt_fraction (`float`): share of `pair_length` that is prompt (0.5, as in HH-RLHF); used with packing.
        gradient_checkpointing (`bool`): activation checkpointing, as `load_qlora_model(gradient_checkpointing=)`
            and the training config's `activation_checkpointing` (transformers 5's name; on by default).
        lora_r (`int`), lora_targets (`list[str]`, *optional*): LoRA rank and targets (default: the attention
            projections).
        compute_dtype (`str | torch.dtype`): 4-bit compute dtype and dtype of the unquantized body.
        gpu_gb (`float`, *optional*): your card's memory in GiB, added to the report's verdicts.

    Returns:
        `MemoryPlan`: components in bytes, `peak_allocated`, `total`, `fits(gpu_gb)`, `suggest(gpu_gb)`,
        `report()`.
    """
    dtype = getattr(torch, compute_dtype, None) if isinstance(compute_dtype, str) else compute_dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"compute_dtype must be a floating dtype such as 'bfloat16', got {compute_dtype!r}")
    shape = model_shape(resolve_config(config), lora_r, lora_targets)
    if gpu_gb is not None and gpu_gb <= 0:
        raise ValueError(f"gpu_gb must be positive, got {gpu_gb}")
    plan = estimate(shape, batch_size, pair_length, packing, prompt_fraction, gradient_checkpointing, dtype)
    return dataclasses.replace(plan, gpu_gb=gpu_gb)
