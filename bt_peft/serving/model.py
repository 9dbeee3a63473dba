"""The served model: every form `bt-peft serve MODEL` takes, loaded so that `score_ids` (the loop of `bt_peft.score`)
reads its reward."""

import os
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ..embedded import resolve_model
from ..evaluation.loading import load_for_scoring
from ..modeling import configure_bradley_terry, head_name, head_of
from ..quantization import default_device_map, disable_cpu_weight_repacking, keep_head_in_float32, nf4_config
from ..safe_loading import safe_pretrained_kwargs
from ..tokenizer import eos_ids_of, load_tokenizer


def is_scalar_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a local checkpoint with a 1-label head (`bt-peft export --format scalar`, TRL's
    `RewardTrainer`, OpenRLHF): its `logits[:, 0]` is the reward."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "adapter_config.json").is_file() \
        and AutoConfig.from_pretrained(path).num_labels == 1


@torch.no_grad()
def load_scalar_checkpoint(
    path: str | os.PathLike, compute_dtype: torch.dtype, device_map: dict | str, load_in_4bit: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 1-label reward checkpoint as a 2-label Bradley-Terry model: row 1 of the new head is the checkpoint's head,
    row 0 zeros, so `bt_reward` (`logits[:, 1]`) reads the checkpoint's `logits[:, 0]`.

    This is the one place where the server handles 1-label checkpoints; it goes once `AutoModelForBradleyTerry`
    imports them itself (issue #13, item 3), and `load_for_scoring` then serves them too.

    Returns:
        (model, tokenizer) as `load_for_scoring` returns them: eval mode, head in fp32, the tokenizer's pad token
        chosen as in training and equal to `model.config.pad_token_id`.
    """
    kwargs = safe_pretrained_kwargs(path, False, {"dtype": compute_dtype, "device_map": device_map, "num_labels": 1})
    if load_in_4bit:
        kwargs["quantization_config"] = nf4_config(compute_dtype)
        kwargs["quantization_config"].llm_int8_skip_modules = [head_name(AutoConfig.from_pretrained(path))]
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    head = head_of(model)
    scalar = getattr(model, head)
    two_rows = torch.nn.Linear(scalar.in_features, 2, bias=scalar.bias is not None, device=scalar.weight.device,
                               dtype=torch.float32)
    two_rows.weight.zero_()
    two_rows.weight[1] = scalar.weight[0]
    if scalar.bias is not None:
        two_rows.bias.zero_()
        two_rows.bias[1] = scalar.bias[0]
    setattr(model, head, two_rows)
    keep_head_in_float32(two_rows)
    configure_bradley_terry(model.config)
    disable_cpu_weight_repacking(model)
    tokenizer = load_tokenizer(path, eos_ids=eos_ids_of(model.config))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def load_served_model(
    model: str, dtype: str = "float32", device: str | None = None, load_in_4bit: bool = False
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load what `bt-peft serve MODEL` serves.

    Args:
        model (`str`): a merged checkpoint, an adapter directory (4-bit base + adapter), a 1-label scalar reward
            checkpoint, any other 2-label reward checkpoint, or `bt_peft:smollm2`.
        dtype (`str`): "float32", "bfloat16" or "float16": the weights' dtype, or the 4-bit compute dtype.
        device (`str`, *optional*): "cpu", "cuda", "cuda:N"; default: this process's GPU, or the CPU.
        load_in_4bit (`bool`): load a checkpoint's body in 4-bit NF4 (an adapter's base always is).

    Returns:
        (model, tokenizer) ready for `score_ids`: a 2-label model in eval mode whose `bt_reward` is the reward, and
        the tokenizer whose pad id is `model.config.pad_token_id`.
    """
    path = resolve_model(model)
    compute_dtype = getattr(torch, dtype)
    device_map = {"": device} if device else default_device_map()
    if is_scalar_checkpoint(path):
        return load_scalar_checkpoint(path, compute_dtype, device_map, load_in_4bit)
    return load_for_scoring(path, compute_dtype, device_map, load_in_4bit=load_in_4bit)
