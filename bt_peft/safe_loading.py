"""Safe loading: weights come from safetensors only, unless the caller opts in to pickle explicitly.

Pickle files (`pytorch_model.bin`, `adapter_model.bin`, `*.pt`, …) can run arbitrary code when loaded. Every
bt-peft loader (`AutoModelForBradleyTerry.from_pretrained`, `load_reward_model`, `load_qlora_model`,
`load_adapter`) refuses them unless `allow_pickle=True`; `trust_remote_code` is off unless the caller sets it.
"""

import os
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class PickleCheckpointError(ValueError):
    """A checkpoint whose weights exist only in pickle format, loaded without `allow_pickle=True`."""


def refuse_pickle(name_or_path: str | os.PathLike, allow_pickle: bool = False) -> None:
    """Refuse a local checkpoint that holds its weights only in pickle files.

    Args:
        name_or_path (`str`): a local directory (model, adapter or checkpoint), a local file, or a Hub id (not
            inspected here: the loaders pass `use_safetensors=True` to transformers, which then refuses `.bin`).
        allow_pickle (`bool`): the caller's explicit opt-in; nothing is checked then.

    Raises:
        `PickleCheckpointError` naming the path and its pickle files, when it is a pickle file, or a directory with
        pickle files and no `.safetensors` file (where safetensors exist, they are what transformers and PEFT load).
    """
    path = Path(name_or_path)
    if allow_pickle:
        return
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        pickles = [path.name]
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    else:
        return
    if pickles:
        raise PickleCheckpointError(
            f"{path} is a pickle checkpoint ({', '.join(pickles)}); loading it can run arbitrary code; convert it to "
            "safetensors or pass allow_pickle=True if you trust its source"
        )


def safe_pretrained_kwargs(name_or_path: str | os.PathLike, allow_pickle: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a safe load: checks `name_or_path` with `refuse_pickle`, then returns a
    copy of `kwargs` with `trust_remote_code=False` unless the caller set it, and `use_safetensors=True` unless
    `allow_pickle`."""
    refuse_pickle(name_or_path, allow_pickle)
    kwargs = dict(kwargs)
    kwargs.setdefault("trust_remote_code", False)
    if not allow_pickle:
        kwargs.setdefault("use_safetensors", True)
    return kwargs


def load_adapter(model: PreTrainedModel, adapter_dir: str | os.PathLike, allow_pickle: bool = False, **kwargs: Any) -> PeftModel:
    """`PeftModel.from_pretrained(model, adapter_dir, **kwargs)` after `refuse_pickle(adapter_dir, allow_pickle)`.

    Returns:
        `PeftModel`: `model` with the adapter (and saved head) of `adapter_dir`.
    """
    refuse_pickle(adapter_dir, allow_pickle)
    return PeftModel.from_pretrained(model, adapter_dir, **kwargs)
