"""`load_for_scoring`: a reward model and its tokenizer from a merged checkpoint or an adapter directory."""

import os
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from peft.utils import ModulesToSaveWrapper
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..embedded import resolve_model
from ..modeling import UntrainedHeadError, head_of
from ..quantization import default_device_map, load_reward_model, nf4_config
from ..safe_loading import load_adapter
from ..tokenizer import COMPUTE_DTYPE_KEY, bind_pad, eos_ids_of, load_tokenizer, saved_tokenizer_settings


def saved_dtype(checkpoint: str | os.PathLike) -> torch.dtype:
    """The dtype of a checkpoint's weights as its `config.json` records it (`dtype`), float32 when it records none."""
    dtype = AutoConfig.from_pretrained(checkpoint).dtype
    if dtype is None:
        return torch.float32
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))


def dtype_named(name: str) -> torch.dtype | None:
    """The torch dtype of a command-line name ("bfloat16", "float32", "float16"); "auto" gives None: the model's own
    (see `load_for_scoring`)."""
    return None if name == "auto" else getattr(torch, name)


def own_dtype(path: str | os.PathLike) -> torch.dtype:
    """The dtype a model directory computes in by default: an adapter directory's training compute dtype (recorded in
    its tokenizer, `COMPUTE_DTYPE_KEY`; else its base's weights' dtype), a checkpoint's weights' dtype."""
    if (Path(path) / "adapter_config.json").is_file():
        recorded = saved_tokenizer_settings(path).get(COMPUTE_DTYPE_KEY)
        return getattr(torch, recorded) if recorded else saved_dtype(PeftConfig.from_pretrained(path).base_model_name_or_path)
    return saved_dtype(path)


def load_for_scoring(
    path: str | os.PathLike,
    compute_dtype: torch.dtype | None = None,
    device_map: dict | str | None = None,
    load_in_4bit: bool = False,
    allow_new_head: bool = False,
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load a reward model ready for `score` / `evaluate_pairs`, in eval mode.

    Args:
        path (`str`): a local adapter directory (holds `adapter_config.json`, as written by `trainer.save_model`), a
            merged checkpoint (`merge_and_save`), any 2-label reward checkpoint, a 1-label one (TRL, `bt-peft export
            --format scalar`, OpenRLHF: imported by `AutoModelForBradleyTerry`), or, with `allow_new_head`, a
            causal-LM checkpoint (a new zero head: the untrained baseline). `bt_peft:smollm2` names the embedded
            SmolLM2 checkpoint.
        compute_dtype (`torch.dtype`, *optional*): adapter: the base is loaded in 4-bit NF4 with this compute dtype,
            as in training; checkpoint: the weights' dtype. Default (None): the model's own (`own_dtype`): the
            training compute dtype of an adapter, the saved dtype of a checkpoint (a bf16 merge stays bf16).
        device_map: where to put the model; default: this process's GPU, or the CPU.
        load_in_4bit (`bool`): checkpoint: load its body in 4-bit NF4 with `compute_dtype` (the head stays fp32),
            for big models on small GPUs. An adapter's base is always loaded in 4-bit.
        allow_new_head (`bool`): accept a checkpoint without reward head weights (`bt-peft eval --compare`'s
            untrained baseline); off, such a checkpoint, or an adapter that saved no head, raises
            `UntrainedHeadError` naming the head expected and what was found.

    Returns:
        (model, tokenizer): the model (`PeftModel` over the 4-bit base for an adapter, with its trained head;
        `AutoModelForBradleyTerry` otherwise), its head in fp32; the tokenizer saved with the adapter or
        checkpoint, its pad token chosen as in training (`choose_pad_token`), equal to `model.config.pad_token_id`.
    """
    path = resolve_model(str(path))
    device_map = device_map or default_device_map()
    compute_dtype = compute_dtype or own_dtype(path)
    if (Path(path) / "adapter_config.json").is_file():
        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model = load_reward_model(base, nf4_config(compute_dtype), dtype=compute_dtype, device_map=device_map)
        model = load_adapter(model, path)
        head = head_of(model.get_base_model())
        if not allow_new_head and not isinstance(getattr(model.get_base_model(), head), ModulesToSaveWrapper):
            raise UntrainedHeadError(f"the adapter {path} saved no reward head: expected {head!r} in its modules_to_save "
                                     f"(adapter_config.json), found {PeftConfig.from_pretrained(path).modules_to_save}")
    else:
        quantization_config = nf4_config(compute_dtype) if load_in_4bit else None
        model = load_reward_model(path, quantization_config, dtype=compute_dtype, device_map=device_map,
                                  allow_new_head=allow_new_head)
    tokenizer = load_tokenizer(path, eos_ids=eos_ids_of(model.config))
    bind_pad(model, tokenizer)
    return model.eval(), tokenizer
