"""`merge_and_save`: fold a trained adapter into its base and write a plain 2-label checkpoint."""

import os
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer

from .qlora import load_reward_model, nf4_config


def merge_and_save(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    base_model_name_or_path: str | os.PathLike | None = None,
    from_4bit: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Merge a LoRA adapter (with its trained head) into the base model and save a full checkpoint.

    Args:
        adapter_dir (`str`): directory written by `trainer.save_model` (adapter, head, tokenizer).
        output_dir (`str`): where the merged checkpoint goes.
        dtype (`torch.dtype`): dtype of the base and of the written weights: bf16 (default) or fp32.
        base_model_name_or_path (`str`, *optional*): the base; default: the adapter config's
            `base_model_name_or_path`.
        from_4bit (`bool`): the exact route. By default the base is reloaded in 16/32-bit, so the merged
            model differs from the 4-bit model trained by the NF4 quantization error of the base weights (its
            rewards move by that much; the adapter and head are exact). With `from_4bit=True` the base is
            quantized to NF4 as in training, then dequantized to `dtype` before merging: the merged model then
            computes what the trained 4-bit model computed. Use the training compute dtype for `dtype`.
        max_shard_size (`str`): safetensors shard size.

    Returns:
        `Path` of `output_dir`, holding safetensors weights, `config.json` with `num_labels=2`, explicit
        `id2label` and the tokenizer's `pad_token_id`, and the tokenizer with its pad token. Plain
        `AutoModelForSequenceClassification.from_pretrained(output_dir)` reloads it.
    """
    base = base_model_name_or_path or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if from_4bit:
        model = load_reward_model(base, nf4_config(dtype), dtype=dtype, device_map={"": "cpu"})
        model = model.dequantize(dtype=dtype)
    else:
        model = load_reward_model(base, dtype=dtype)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(output_dir)
    return output_dir
