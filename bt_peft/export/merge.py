"""`merge_and_save`: fold a trained adapter into its base and write a plain 2-label checkpoint."""

import os
from pathlib import Path

import torch
from peft import PeftConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..atomic import atomic_output_dir
from ..modeling import zero_unused_logit
from ..quantization import load_reward_model, nf4_device
from ..safe_loading import load_adapter
from ..tokenizer import bind_pad
from .model_card import write_model_card
from .streaming_merge import nf4_roundtrip, quantized_weights, streaming_merge


def merge_in_memory(adapter_dir: str | os.PathLike, output_dir: Path, base: str | os.PathLike, dtype: torch.dtype,
                    from_4bit: bool, max_shard_size: int | str, tokenizer: PreTrainedTokenizerBase,
                    device: str | torch.device | None = None) -> None:
    """The whole base in RAM: load it in `dtype` on the CPU (with `from_4bit`, every weight bitsandbytes quantizes is
    round-tripped through NF4 on `device`, one at a time, as loading in NF4 and `dequantize` do), apply the adapter
    with peft, `merge_and_unload`, and `save_pretrained` into `output_dir` with the pad id of `tokenizer` (the other
    arguments as in `merge_and_save`)."""
    model = load_reward_model(base, dtype=dtype)
    if from_4bit:
        device = nf4_device(device)
        parameters = dict(model.named_parameters())
        for key in sorted(quantized_weights(model)):
            parameters[key].data = nf4_roundtrip(parameters[key].data, device)
    model = load_adapter(model, adapter_dir).merge_and_unload()
    zero_unused_logit(model)
    model.to(dtype)
    bind_pad(model, tokenizer)
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)


def merge_and_save(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    base_model_name_or_path: str | os.PathLike | None = None,
    from_4bit: bool = False,
    max_shard_size: int | str = "5GB",
    low_memory: bool = True,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Merge a LoRA adapter (with its trained head) into the base model and save a full checkpoint.

    Args:
        adapter_dir (`str`): directory written by `trainer.save_model` (adapter, head, tokenizer).
        output_dir (`str`): where the merged checkpoint goes. It is written into a temporary directory beside it and
            renamed into place when complete, so it appears whole or not at all, even if the process is killed.
        dtype (`torch.dtype`): dtype of the base and of the written weights: bf16 (default) or fp32 (fp16 too).
        base_model_name_or_path (`str`, *optional*): the base; default: the adapter config's
            `base_model_name_or_path`.
        from_4bit (`bool`): the exact route. By default the base is reloaded in 16/32-bit, so the merged
            model differs from the 4-bit model trained by the NF4 quantization error of the base weights (its
            rewards move by that much; the adapter and head are exact). With `from_4bit=True` the base is
            quantized to NF4 as in training, then dequantized to `dtype` before merging: the merged model then
            computes what the trained 4-bit model computed. Use the training compute dtype for `dtype`.
        max_shard_size (`int | str`): safetensors shard size.
        low_memory (`bool`): the streaming merge (default): the base is read, merged and written one weight at a
            time, so RAM holds about one weight plus the adapter instead of the whole model (Llama-3-8B in bf16
            merges in a free Colab's 12.7 GB). Its output equals the in-memory merge's bitwise (fp32 and bf16, both
            routes). It needs a safetensors base whose keys transformers loads unchanged (Llama, Mistral, Qwen,
            Gemma, Phi-3, …) and a plain LoRA adapter on linear layers; otherwise it raises a `ValueError` saying
            so, and `low_memory=False` loads the whole base (any architecture and LoRA variant peft can merge).
        overwrite (`bool`): replace a non-empty `output_dir`; otherwise `FileExistsError` names it (before any work).
        device (`str | torch.device`, *optional*): where `from_4bit`'s NF4 round trip runs, one weight at a time
            (results come back to the CPU to be merged and written); default: the GPU when there is one, else the CPU.

    Returns:
        `Path` of `output_dir`, holding safetensors weights (sharded with `model.safetensors.index.json` when larger
        than `max_shard_size`), `config.json` with `num_labels=2`, explicit `id2label` and the tokenizer's
        `pad_token_id`, the tokenizer with its pad token, and a model card (`README.md`). Plain
        `AutoModelForSequenceClassification.from_pretrained(output_dir)` reloads it.
    """
    base = base_model_name_or_path or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    merge = streaming_merge if low_memory else merge_in_memory
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        merge(adapter_dir, staging, base, dtype, from_4bit, max_shard_size, tokenizer, device)
        tokenizer.save_pretrained(staging)
        write_model_card(staging, base_model=str(base), from_4bit=from_4bit)
    return Path(output_dir)
