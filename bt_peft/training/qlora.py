"""Load `AutoModelForBradleyTerry` in 4-bit (NF4, double quant) with LoRA on the attention projections."""

import dataclasses
import logging
import os
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..activation_checkpointing import enable_activation_checkpointing
from ..modeling import head_of
from ..quantization import default_device_map, load_reward_model, nf4_config
from ..tokenizer import bind_pad, eos_ids_of, load_tokenizer
from ..validation import validate_training_setup

logger = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
}
"""LoRA targets by `config.model_type`: the attention projections of each architecture."""

FP16_WARNING = "fp16 is prone to NaN losses with score heads (peft#1522, trl#3236); prefer bf16"


def lora_targets(config: PretrainedConfig) -> list[str]:
    """The attention projections of `config.model_type`; raises `ValueError` for an unknown architecture."""
    if config.model_type not in ATTENTION_PROJECTIONS:
        raise ValueError(
            f"No default LoRA targets for model_type {config.model_type!r}; pass target_modules= "
            f"(known: {', '.join(sorted(ATTENTION_PROJECTIONS))})"
        )
    return list(ATTENTION_PROJECTIONS[config.model_type])


def add_lora(model: PreTrainedModel, lora_config: LoraConfig) -> PeftModel:
    """Wrap a reward model with LoRA adapters; its head is always trained and saved with the adapter.

    Args:
        model (`PreTrainedModel`): from `load_reward_model`.
        lora_config (`LoraConfig`): the head is added to `modules_to_save` of a copy when missing.

    Returns:
        `PeftModel`; the trainable parameter count is logged (INFO).
    """
    head = head_of(model)
    modules_to_save = list(lora_config.modules_to_save or [])
    lora_config = dataclasses.replace(lora_config, modules_to_save=modules_to_save + [head] * (head not in modules_to_save))
    model = get_peft_model(model, lora_config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("bt-peft: %s trainable parameters of %s (%.3f%%), head %r in fp32", f"{trainable:,}", f"{total:,}",
                100 * trainable / total, head)
    return model


def load_qlora_model(
    model_name_or_path: str | os.PathLike,
    compute_dtype: torch.dtype = torch.bfloat16,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: list[str] | None = None,
    gradient_checkpointing: bool = True,
    attn_implementation: str | None = None,
    device_map: dict | str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    quant_storage: torch.dtype | None = None,
    use_rslora: bool = False,
    modules_to_save: list[str] | None = None,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load a Bradley-Terry reward model for QLoRA training.

    Args:
        model_name_or_path (`str`): causal-LM or reward checkpoint (Hub id or local directory).
        compute_dtype (`torch.dtype`): 4-bit compute dtype and dtype of the unquantized body (embeddings,
            norms): bf16 by default, fp32 selectable; fp16 warns (NaN-prone with score heads).
        lora_r, lora_alpha, lora_dropout: LoRA hyper-parameters (defaults 16, 32, 0.05).
        target_modules (`list[str]`, *optional*): LoRA targets; default: the architecture's attention projections.
        gradient_checkpointing (`bool`): non-reentrant activation checkpointing (default on), transformers'
            `activation_checkpointing_enable` where it has it (see `bt_peft.activation_checkpointing`).
        attn_implementation (`str`, *optional*): e.g. "sdpa", "flash_attention_2", "eager".
        device_map: where to put the model; default: this process's GPU, or the CPU (`default_device_map`; none
            under DeepSpeed ZeRO-3, which refuses one).
        trust_remote_code (`bool`): off by default; never turned on silently.
        allow_pickle (`bool`): load a checkpoint whose weights are pickle files (`pytorch_model.bin`); off by
            default (`PickleCheckpointError`).
        quant_storage (`torch.dtype`, *optional*): storage dtype of the 4-bit weights (see `nf4_config`); default
            uint8. For FSDP (`recipes/accelerate/fsdp_qlora.yaml`) set it to `compute_dtype` (another float raises
            `ValueError`): then every frozen weight has that dtype, so FSDP can flatten and shard them.
        use_rslora (`bool`): rank-stabilized LoRA, scaling `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
        modules_to_save (`list[str]`, *optional*): more modules trained in full and saved with the adapter (the head
            always is).

    Returns:
        (`PeftModel`, tokenizer): linear layers in NF4 with double quant; LoRA adapters (fp32) on the targets;
        the classification head unquantized, in fp32, trainable and saved with the adapter; a tokenizer whose
        pad token (distinct from eos where the vocabulary allows) equals `model.config.pad_token_id`.
    """
    validate_training_setup(model=model_name_or_path, lora_config=LoraConfig(target_modules=target_modules),
                            load_in_4bit=True, trust_remote_code=trust_remote_code)
    if compute_dtype == torch.float16:
        warnings.warn(FP16_WARNING, stacklevel=2)
    fsdp_storage = quant_storage is not None and quant_storage.is_floating_point
    if fsdp_storage and quant_storage != compute_dtype:
        raise ValueError(
            f"quant_storage={quant_storage} must equal compute_dtype={compute_dtype}: FSDP flattens the 4-bit and the "
            "unquantized weights of a layer into one tensor of one dtype"
        )
    model = load_reward_model(
        model_name_or_path,
        nf4_config(compute_dtype, quant_storage),
        dtype=compute_dtype,
        attn_implementation=attn_implementation,
        device_map=device_map or default_device_map(),
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
    tokenizer = load_tokenizer(model_name_or_path, eos_ids=eos_ids_of(model.config), trust_remote_code=trust_remote_code)
    bind_pad(model, tokenizer)
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules or lora_targets(model.config),
        task_type="SEQ_CLS",
        use_rslora=use_rslora,
        modules_to_save=modules_to_save,
    )
    model = add_lora(model, lora)
    if fsdp_storage:  # the head's frozen original (kept by peft, unused while the adapter is on) joins the body's dtype
        for param in model.parameters():
            if not param.requires_grad and param.dtype != quant_storage:
                param.data = param.data.to(quant_storage)
    return model, tokenizer
