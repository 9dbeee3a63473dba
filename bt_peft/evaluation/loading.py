"""`load_for_scoring`: a reward model and its tokenizer from a merged checkpoint or an adapter directory."""

import os
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..embedded import resolve_model
from ..quantization import default_device_map, load_reward_model, nf4_config
from ..safe_loading import load_adapter
from ..tokenizer import bind_pad, eos_ids_of, load_tokenizer


def load_for_scoring(
    path: str | os.PathLike,
    compute_dtype: torch.dtype = torch.float32,
    device_map: dict | str | None = None,
    load_in_4bit: bool = False,
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load a reward model ready for `score` / `evaluate_pairs`, in eval mode.

    Args:
        path (`str`): a local adapter directory (holds `adapter_config.json`, as written by `trainer.save_model`), a
            merged checkpoint (`merge_and_save`), any 2-label reward checkpoint, or a causal-LM checkpoint (whose
            new head is random: an untrained baseline). `bt_peft:smollm2` names the embedded SmolLM2 checkpoint.
        compute_dtype (`torch.dtype`): adapter: the base is loaded in 4-bit NF4 with this compute dtype, as in
            training (use the training one for its exact rewards); checkpoint: the weights' dtype. Default fp32.
        device_map: where to put the model; default: this process's GPU, or the CPU.
        load_in_4bit (`bool`): checkpoint: load its body in 4-bit NF4 with `compute_dtype` (the head stays fp32),
            for big models on small GPUs. An adapter's base is always loaded in 4-bit.

    Returns:
        (model, tokenizer): the model (`PeftModel` over the 4-bit base for an adapter, with its trained head;
        `AutoModelForBradleyTerry` otherwise), its head in fp32; the tokenizer saved with the adapter or
        checkpoint, its pad token chosen as in training (`choose_pad_token`), equal to `model.config.pad_token_id`.
    """
    path = resolve_model(str(path))
    device_map = device_map or default_device_map()
    if (Path(path) / "adapter_config.json").is_file():
        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model = load_reward_model(base, nf4_config(compute_dtype), dtype=compute_dtype, device_map=device_map)
        model = load_adapter(model, path)
    else:
        quantization_config = nf4_config(compute_dtype) if load_in_4bit else None
        model = load_reward_model(path, quantization_config, dtype=compute_dtype, device_map=device_map)
    tokenizer = load_tokenizer(path, eos_ids=eos_ids_of(model.config))
    bind_pad(model, tokenizer)
    return model.eval(), tokenizer
