"""Streaming merge: fold a LoRA adapter into its base one tensor at a time, so host RAM holds a tensor, not a model.

Each weight of the base checkpoint is read alone, merged (`W + (B @ A) * scaling`, the expression of peft's
`merge_and_unload`) and written straight into its output shard (`safetensors_io` reads and writes the files); the
head and any other `modules_to_save` come from the adapter. The output is what `model.save_pretrained` writes after
the in-memory merge: the same files, keys, index metadata and config, with equal weights (bitwise in fp32 and bf16,
see `tests/test_streaming_merge.py`).
"""

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from peft import LoraConfig, PeftConfig, PeftType
from peft.utils import load_peft_weights
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..modeling import AutoModelForBradleyTerry, head_of, head_output_layer, meta_device, zero_unused_row
from ..quantization import nf4_config, nf4_device
from ..safe_loading import refuse_pickle
from ..tokenizer import bind_pad
from ..upstream import import_internal
from .safetensors_io import SAFETENSORS_DTYPES, checkpoint_tensors, local_checkpoint, read_tensor, write_safetensors

logger = logging.getLogger(__name__)

# Internal helpers of peft and transformers, used so that the streaming merge follows their rules exactly (rank and
# alpha patterns, tied weights, modules left out of quantization); a release that moves one fails here, loudly.
get_pattern_key = import_internal("peft", "peft.utils.other", "get_pattern_key")
remove_tied_weights_from_state_dict = import_internal(
    "transformers", "transformers.modeling_utils", "remove_tied_weights_from_state_dict"
)
should_convert_module = import_internal("transformers", "transformers.quantizers.quantizers_utils", "should_convert_module")

ADAPTER_PREFIX = "base_model.model."
UNMERGEABLE_SETTINGS = ("lora_bias", "fan_in_fan_out", "layer_replication", "target_parameters", "trainable_token_indices")
"""LoRA settings that change the merge or the architecture: the streaming merge refuses adapters that use them."""
LOW_MEMORY_HINT = "merge with low_memory=False (the in-memory route)"


@dataclasses.dataclass
class LoraDelta:
    """One LoRA pair: the merged weight is `W + (B @ A) * scaling`, computed in fp32 as peft does."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float


def reward_skeleton(config: AutoConfig) -> PreTrainedModel:
    """The 2-label reward model of `config` on the meta device: its keys, shapes and modules, no weights."""
    with meta_device():
        return AutoModelForBradleyTerry.from_config(config)


def check_adapter_config(config: PeftConfig) -> LoraConfig:
    """Refuse an adapter whose merge is not `W + (B @ A) * scaling` on linear layers (DoRA, other variants, …)."""
    if config.peft_type != PeftType.LORA:
        raise ValueError(f"streaming merge: only LoRA adapters are supported, not {config.peft_type}; {LOW_MEMORY_HINT}")
    fields = {field.name: field for field in dataclasses.fields(config)}
    used = [name for name, field in fields.items() if field.metadata.get("is_lora_variant") and getattr(config, name)]
    used += [name for name in UNMERGEABLE_SETTINGS if getattr(config, name, None)]
    if config.init_lora_weights in fields["init_lora_weights"].metadata.get("lora_variants", ()):
        used.append(f"init_lora_weights={config.init_lora_weights!r}")
    if used:
        raise ValueError(f"streaming merge: the adapter uses {', '.join(used)}, which it does not support; {LOW_MEMORY_HINT}")
    return config


def read_adapter(adapter_dir: str | os.PathLike) -> tuple[dict[str, LoraDelta], dict[str, torch.Tensor]]:
    """Read an adapter directory (`adapter_config.json` + weights) as merge inputs.

    Args:
        adapter_dir (`str`): written by `trainer.save_model` (or any peft LoRA `save_pretrained`).

    Returns:
        (`deltas`, `replaced`): `deltas` maps a weight key of the reward model (`model.layers.0.self_attn.q_proj.weight`)
        to its `LoraDelta` (scaling `lora_alpha / r`, or `/ sqrt(r)` with rslora, per-module `alpha_pattern` and
        `rank_pattern` applied); `replaced` maps a key to the adapter's full tensor (the head, `modules_to_save`).
        Raises `ValueError` on a setting or tensor it cannot merge, `PickleCheckpointError` on a pickle-only adapter.
    """
    config = check_adapter_config(PeftConfig.from_pretrained(adapter_dir))
    refuse_pickle(adapter_dir)
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    deltas, replaced = {}, {}
    for name, tensor in weights.items():
        if not name.startswith(ADAPTER_PREFIX):
            raise ValueError(f"streaming merge: adapter tensor {name!r} lacks the {ADAPTER_PREFIX!r} prefix peft writes")
        key = name.removeprefix(ADAPTER_PREFIX)
        module, _, kind = key.rpartition(".lora_")
        if not module:
            replaced[key] = tensor
        elif kind == "A.weight":
            r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
            if tensor.shape[0] != r:
                raise ValueError(f"streaming merge: {name} has rank {tensor.shape[0]}, the adapter config says {r}")
            B = weights[f"{ADAPTER_PREFIX}{module}.lora_B.weight"]
            scaling = alpha / r**0.5 if config.use_rslora else alpha / r
            deltas[f"{module}.weight"] = LoraDelta(tensor.float(), B.float(), scaling)  # peft upcasts adapters to fp32
        elif kind != "B.weight":
            raise ValueError(f"streaming merge: cannot merge adapter tensor {name!r} (only lora_A/lora_B of linear layers); "
                             f"{LOW_MEMORY_HINT}")
    return deltas, replaced


def saved_shapes(skeleton: PreTrainedModel) -> dict[str, list[int]]:
    """Key -> shape of every weight `save_pretrained` writes for `skeleton` (tied duplicates removed), in its order."""
    state = remove_tied_weights_from_state_dict(skeleton.state_dict(), skeleton)
    return {key: list(tensor.shape) for key, tensor in state.items()}


def map_checkpoint_keys(
    shapes: dict[str, list[int]], prefix: str, checkpoint: dict[str, tuple[Path, list[int]]], provided: set[str]
) -> dict[str, str]:
    """Match the reward model's weights to the base checkpoint's, without guessing.

    Args:
        shapes (`dict`): from `saved_shapes` (the reward model's weights).
        prefix (`str`): the backbone's `base_model_prefix` (`"model"` for Llama).
        checkpoint (`dict`): from `checkpoint_tensors`.
        provided (`set[str]`): keys the adapter supplies whole (the head).

    Returns:
        `dict[str, str]`: reward-model key -> checkpoint key, for every key of `shapes` but `provided`. The
        checkpoint's own head (`lm_head`, anything outside the backbone) is dropped; a bare-backbone checkpoint
        (`layers.0…`) gets the prefix. Raises `ValueError` naming the weights when a backbone or adapter weight has no
        place, a weight has no source, or shapes differ (e.g. an architecture whose checkpoint transformers converts
        on load).
    """
    bare = not any(key.startswith(prefix + ".") for key in checkpoint)
    mapping = {(f"{prefix}.{key}" if bare else key): key for key in checkpoint if bare or key.startswith(prefix + ".")}
    problems = {
        "the base checkpoint has weights with no place in the reward model": [key for key in mapping if key not in shapes],
        "the adapter has weights with no place in the reward model": [key for key in provided if key not in shapes],
        "no weights for": [key for key in shapes if key not in mapping and key not in provided],
        "other shapes in the base checkpoint for": [
            key for key, source in mapping.items() if key in shapes and checkpoint[source][1] != shapes[key]
        ],
    }
    for problem, keys in problems.items():
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (" …" if len(keys) > 5 else "")
            raise ValueError(f"streaming merge: {problem}: {shown}; {LOW_MEMORY_HINT}")
    return {key: mapping[key] for key in shapes if key not in provided}


def quantized_weights(skeleton: PreTrainedModel) -> set[str]:
    """Keys of the weights bitsandbytes quantizes when the model is loaded with `nf4_config`: every `nn.Linear`
    except the head (transformers' `replace_with_bnb_linear` with the head in `llm_int8_skip_modules`)."""
    skipped = [head_of(skeleton)]
    return {f"{name}.weight" for name, module in skeleton.named_modules()
            if type(module) is torch.nn.Linear and should_convert_module(name, skipped)}


def nf4_roundtrip(weight: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`weight` quantized with `nf4_config` (NF4, double quant, blocksize 64) as transformers does when loading, then
    dequantized as `model.dequantize` does, both on `device` (see `nf4_device`); returned on `weight`'s device in its
    dtype. Only this one weight (and its 4-bit copy) is on `device` at a time."""
    import bitsandbytes as bnb

    config = nf4_config(weight.dtype)
    quantized = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=config.bnb_4bit_quant_type,
                                  compress_statistics=config.bnb_4bit_use_double_quant,
                                  quant_storage=config.bnb_4bit_quant_storage).to(device)
    dequantized = bnb.functional.dequantize_4bit(quantized.data, quantized.quant_state)
    return dequantized.to(weight.device, weight.dtype)


def streaming_merge(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | os.PathLike,
    dtype: torch.dtype,
    from_4bit: bool,
    max_shard_size: int | str,
    tokenizer: PreTrainedTokenizerBase,
    device: str | torch.device | None = None,
) -> None:
    """Merge an adapter into its base weight by weight and write the reward checkpoint's weights and config.

    Args:
        adapter_dir (`str`): the adapter directory (LoRA on linear layers, the head in `modules_to_save`).
        output_dir (`str`): an existing, empty directory (`merge_and_save` passes its staging directory).
        base_model_name_or_path (`str`): local directory or Hub id of a safetensors checkpoint.
        dtype (`torch.dtype`): fp32, bf16 or fp16: each base weight is cast to it, the LoRA delta is computed in fp32
            and added in place (`W += (B @ A) * scaling`), as peft merges into a base loaded in `dtype`.
        from_4bit (`bool`): round-trip the weights bitsandbytes quantizes (every linear layer but the head) through
            NF4 before merging, as the in-memory exact route does.
        max_shard_size (`int | str`): shard size, split as `save_pretrained` splits.
        tokenizer (`PreTrainedTokenizerBase`): the adapter's tokenizer; its pad id goes into `config.json` (`bind_pad`).
        device (`str | torch.device`, *optional*): where the NF4 round trip runs (`from_4bit`), one weight at a time;
            default: the GPU when there is one (`nf4_device`). The LoRA delta is added on the CPU either way.

    Output (in `output_dir`): `model.safetensors` or `model-0000k-of-0000n.safetensors` with
    `model.safetensors.index.json`, and `config.json` (2 labels, `id2label`, `pad_token_id`, `dtype`). Peak memory:
    the largest base weight (mapped and copied while it is read) plus the adapter. Raises `ValueError` on what it
    cannot merge exactly (see `read_adapter`, `map_checkpoint_keys`).
    """
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"streaming merge: dtype must be one of {', '.join(map(str, SAFETENSORS_DTYPES))}, got {dtype}")
    deltas, replaced = read_adapter(adapter_dir)
    skeleton = reward_skeleton(AutoConfig.from_pretrained(base_model_name_or_path))
    if skeleton._keep_in_fp32_modules or skeleton._keep_in_fp32_modules_strict:
        raise ValueError(f"streaming merge: {type(skeleton).__name__} keeps modules in fp32 when loading; {LOW_MEMORY_HINT}")
    if from_4bit and any(isinstance(module, Conv1D) for module in skeleton.modules()):
        raise ValueError(f"streaming merge: {type(skeleton).__name__} has Conv1D layers; {LOW_MEMORY_HINT}")
    try:
        checkpoint = checkpoint_tensors(local_checkpoint(base_model_name_or_path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"streaming merge: {error}; {LOW_MEMORY_HINT}") from None
    shapes = saved_shapes(skeleton)
    output_layer, _ = head_output_layer(skeleton)
    for key in (f"{output_layer}.weight", f"{output_layer}.bias"):
        if key in replaced:
            zero_unused_row(replaced[key])
    sources = map_checkpoint_keys(shapes, skeleton.base_model_prefix, checkpoint, set(replaced))
    linear = {f"{name}.weight" for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)}
    for key, delta in deltas.items():
        if key not in linear or key not in sources:
            raise ValueError(f"streaming merge: the adapter's LoRA target {key} is not a linear weight of the base checkpoint")
        if [delta.B.shape[0], delta.A.shape[1]] != shapes[key]:
            raise ValueError(f"streaming merge: LoRA {key} is {delta.B.shape[0]}x{delta.A.shape[1]}, the weight {shapes[key]}")
    quantized = quantized_weights(skeleton) if from_4bit else set()
    device = nf4_device(device)

    def merged(key: str) -> torch.Tensor:
        if key in replaced:
            return replaced[key].to(dtype)
        weight = read_tensor(checkpoint[sources[key]][0], sources[key]).to(dtype)
        if key in quantized:
            weight = nf4_roundtrip(weight, device)
        if key in deltas:
            weight += (deltas[key].B @ deltas[key].A) * deltas[key].scaling
        return weight

    output_dir = Path(output_dir)
    meta = {key: torch.empty(shape, dtype=dtype, device="meta") for key, shape in shapes.items()}
    pattern = SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(meta, filename_pattern=pattern, max_shard_size=max_shard_size)
    for number, (filename, keys) in enumerate(split.filename_to_tensors.items(), start=1):
        write_safetensors(output_dir / filename, {key: shapes[key] for key in keys}, dtype, merged)
        logger.info("bt-peft merge: wrote %s (%d/%d)", filename, number, len(split.filename_to_tensors))
    if split.is_sharded:
        metadata = {"total_parameters": skeleton.num_parameters(), **split.metadata}
        index = {"metadata": metadata, "weight_map": split.tensor_to_filename}
        (output_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = skeleton.config
    bind_pad(config, tokenizer)
    config.dtype = str(dtype).removeprefix("torch.")
    config.architectures = [type(skeleton).__name__]
    config.save_pretrained(output_dir)
