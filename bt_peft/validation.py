"""Fail fast on training set-ups that cannot work, before any weights are loaded.

`validate_training_setup` runs at the start of `load_qlora_model`, `BradleyTerryRewardTrainer` and the recipe. Model
checks run on a skeleton built from `config.json` alone on the meta device: no weight file is read.
"""

import os
import re
from collections.abc import Mapping

import torch
from peft import PeftConfig
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .data import minimal_pair_length
from .modeling import head_of, meta_device, module_matches
from .upstream import import_internal


class TrainingSetupError(ValueError):
    """A training configuration that cannot work; the message says which settings clash and what to change."""


def refuse_settings(settings: object, refused: Mapping[str, tuple[bool, str]], what: str) -> None:
    """Refuse, all at once, the fields of a settings object set to something bt-peft does not do.

    Args:
        settings (`object`): the settings (a dataclass such as `ModelConfig` or `RewardConfig`); each field named in
            `refused` is read from it for the message.
        refused (`Mapping[str, tuple[bool, str]]`): field name -> (`bad`: whether its value is refused, `why`).
        what (`str`): what the settings are, the start of the message (e.g. "unsupported model settings").

    Raises:
        `ValueError`: `"<what>: <field>=<value>: <why>; ..."`, naming every refused field, when any is `bad`.
    """
    problems = [f"{name}={getattr(settings, name)!r}: {why}" for name, (bad, why) in refused.items() if bad]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


def check_precision(args) -> None:
    """fp16 mixed precision needs a CUDA GPU: refuse `args.fp16` with `args.use_cpu` or no GPU."""
    if getattr(args, "fp16", False) and (getattr(args, "use_cpu", False) or not torch.cuda.is_available()):
        where = "use_cpu=True" if getattr(args, "use_cpu", False) else "no CUDA GPU is available"
        raise TrainingSetupError(
            f"fp16=True needs a CUDA GPU, but {where}: set fp16=False (bf16=True or fp32 train on the CPU)"
        )


def check_4bit_support(device_type: str) -> None:
    """Refuse 4-bit loading when bitsandbytes is missing, too old, or has no back end for `device_type`
    ("cuda", "cpu", ...), naming what to install."""
    minimum = import_internal("transformers", "transformers.utils.import_utils", "BITSANDBYTES_MIN_VERSION")
    is_bitsandbytes_available = import_internal("transformers", "transformers.utils.import_utils", "is_bitsandbytes_available")
    install = f"pip install -U 'bitsandbytes>={minimum}'"
    try:
        import bitsandbytes
    except ImportError as error:
        raise TrainingSetupError(f"4-bit loading needs bitsandbytes, which cannot be imported ({error}): {install}") from None
    if not is_bitsandbytes_available():
        raise TrainingSetupError(f"bitsandbytes {bitsandbytes.__version__} is too old for 4-bit loading: {install}")
    supported = sorted(getattr(bitsandbytes, "supported_torch_devices", ()))
    if device_type not in supported:
        raise TrainingSetupError(
            f"bitsandbytes {bitsandbytes.__version__} has no 4-bit back end for device {device_type!r} (it supports "
            f"{', '.join(supported)}); see https://huggingface.co/docs/bitsandbytes/main/en/installation"
        )
    if device_type == "cuda":
        missing_library = import_internal("bitsandbytes", "bitsandbytes.cextension", "ErrorHandlerMockBNBNativeLibrary")
        if isinstance(import_internal("bitsandbytes", "bitsandbytes.cextension", "lib"), missing_library):
            raise TrainingSetupError(
                f"bitsandbytes {bitsandbytes.__version__} has no CUDA library for torch's CUDA {torch.version.cuda}: "
                f"{install}, or a build matching your CUDA"
            )


def model_skeleton(model_name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> torch.nn.Module:
    """The sequence-classification model of a checkpoint built from its config alone, on the meta device."""
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    with meta_device():
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)


def unmatched(targets: list[str] | set[str], names: list[str]) -> list[str]:
    """The target names (in their order) that match none of the module `names` by peft's rule (`module_matches`)."""
    return [target for target in targets if not any(module_matches(name, [target]) for name in names)]


def check_lora_targets(model: torch.nn.Module, target_modules: list[str] | set[str] | str | None) -> None:
    """Every LoRA target name (or the regex, peft's `re.fullmatch`) must match a module of `model`; "all-linear"
    and None (peft's or bt-peft's defaults) are not checked. The error lists the Linear layer names."""
    if target_modules is None or target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    if isinstance(target_modules, str):
        missing = [] if any(re.fullmatch(target_modules, name) for name in names) else [target_modules]
    else:
        missing = sorted(unmatched(target_modules, names))
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise TrainingSetupError(
            f"LoRA target_modules {missing} match no module of {type(model).__name__}; its Linear layers are "
            f"named: {', '.join(linear)}"
        )


def check_head(model: torch.nn.Module, modules_to_save: list[str] | None) -> None:
    """`model` must have a head bt-peft knows (`modeling.HEAD_NAMES`), and each name in `modules_to_save` a module."""
    try:
        head = head_of(model)
    except ValueError as error:
        raise TrainingSetupError(f"no classification head to train: {error}") from None
    names = [name for name, _ in model.named_modules()]
    missing = unmatched(modules_to_save or [], names)
    if missing:
        raise TrainingSetupError(
            f"modules_to_save {missing} name no module of {type(model).__name__}; its classification head is {head!r}"
        )


def check_max_length(max_length: int | None, tokenizer: PreTrainedTokenizerBase) -> None:
    """`max_length` must hold a minimal pair (`data.minimal_pair_length`); None means no limit."""
    if max_length is not None and max_length < minimal_pair_length(tokenizer):
        specials = minimal_pair_length(tokenizer) - 2
        raise TrainingSetupError(
            f"max_length={max_length} cannot hold a minimal pair: {specials} special token(s) the tokenizer adds + 1 "
            f"prompt token + 1 response token = {minimal_pair_length(tokenizer)}; raise max_length"
        )


def validate_training_setup(
    args=None,
    model: str | os.PathLike | torch.nn.Module | None = None,
    lora_config: PeftConfig | None = None,
    load_in_4bit: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Check a training set-up before any weights are loaded.

    Args:
        args (`TrainingArguments`, *optional*): e.g. a `RewardConfig`; `fp16` and `use_cpu` are checked, and
            `max_length` (when it has one) against the tokenizer.
        model (`str | PathLike | nn.Module`, *optional*): a checkpoint (only its config is read: the checks run
            on a meta-device skeleton) or a model already in memory.
        lora_config (`PeftConfig`, *optional*): its `target_modules` and `modules_to_save` must name modules.
        load_in_4bit (`bool`): whether the model is to be loaded in 4-bit (bitsandbytes must support the device
            the loader uses: this process's GPU, else the CPU).
        tokenizer (`PreTrainedTokenizerBase`, *optional*): for the `max_length` check; loaded from `model` (a
            path) when not given.
        trust_remote_code (`bool`): passed on when reading the config and tokenizer.

    Returns:
        None.

    Raises:
        TrainingSetupError: fp16 without a CUDA GPU, 4-bit without a usable bitsandbytes, LoRA targets or
            `modules_to_save` that match no module, no known classification head, or `max_length` shorter than a
            minimal pair.
    """
    if args is not None:
        check_precision(args)
    if load_in_4bit:
        check_4bit_support("cuda" if torch.cuda.is_available() else "cpu")
    is_path = isinstance(model, (str, os.PathLike))
    max_length = getattr(args, "max_length", None)
    if max_length is not None and tokenizer is None and is_path:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    if max_length is not None and tokenizer is not None:
        check_max_length(max_length, tokenizer)
    if model is not None:
        skeleton = model_skeleton(model, trust_remote_code) if is_path else model
        check_head(skeleton, getattr(lora_config, "modules_to_save", None))
        check_lora_targets(skeleton, getattr(lora_config, "target_modules", None))
