"""`export_reward_model`: a reward checkpoint in the form another tool reads, written shard by shard and atomically.

- `scalar`: a 1-label checkpoint whose `logits[:, 0]` is the reward (row 1 of the Bradley-Terry head), with
  `problem_type: "regression"` (so vLLM and `pipeline` return the raw score), OpenRLHF's `value_head_prefix` and,
  when given, its reward `mean`/`std`. TRL's GRPO/RLOO (`reward_funcs="<dir>"`), OpenRLHF, vLLM, TEI read it.
- `halos`: the 2-label form (`logits[:, 1]`, row 0 zero): a copy, or a merge for an adapter directory.
"""

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import AutoConfig, PretrainedConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from ..atomic import atomic_output_dir, check_output_dir
from ..modeling import head_output_layer, zero_unused_row
from ..tokenizer import appends_eos, bind_pad, eos_ids_of, load_tokenizer
from .merge import merge_and_save
from .model_card import write_model_card
from .safetensors_io import checkpoint_tensors, file_dtype, local_checkpoint, read_tensor, write_safetensors
from .streaming_merge import reward_skeleton

logger = logging.getLogger(__name__)

FORMATS = ("scalar", "halos")
Normalization = tuple[float, float] | Callable[[Path], tuple[float, float]]
"""OpenRLHF's reward `(mean, std)`, or a function computing it from the 2-label checkpoint directory being exported."""


def export_reward_model(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    format: str = "scalar",
    overwrite: bool = False,
    *,
    normalization: Normalization | None = None,
    dtype: torch.dtype = torch.bfloat16,
    from_4bit: bool = False,
) -> Path:
    """Export a Bradley-Terry reward model as a single-score (`scalar`) or 2-label (`halos`) checkpoint.

    Args:
        model_dir (`str`): a 2-label reward checkpoint (`merge_and_save`, `save_pretrained`; local or a Hub id) or
            a local adapter directory (`trainer.save_model`), merged on the way with `merge_and_save(dtype=dtype,
            from_4bit=from_4bit)` into a temporary directory beside `output_dir`.
        output_dir (`str`): the exported checkpoint; written into a temporary sibling and renamed into place, so it
            appears whole or not at all. A non-empty one is refused (`FileExistsError`) unless `overwrite`.
        format (`str`): `"scalar"` or `"halos"` (see the module docstring).
        overwrite (`bool`): replace a non-empty `output_dir`.
        normalization: with `format="scalar"`, OpenRLHF's reward statistics written into `config.json` as `mean`
            and `std` (with `normalize_reward: true`): a `(mean, std)` pair, or a function of the 2-label checkpoint
            directory returning one (`bt-peft export --normalize_on DATA` passes the mean and unbiased std of the
            rewards of the dataset's chosen and rejected texts, as OpenRLHF's `RewardModelTrainer` computes them).
        dtype (`torch.dtype`), from_4bit (`bool`): of the merge, for an adapter directory only; a checkpoint's weights
            keep their dtype.

    Returns:
        `Path` of `output_dir`: the safetensors files (same shards and names as the source, the head changed),
        `config.json`, the tokenizer with its pad token (`config.pad_token_id` is its id) and a model card. Each
        shard is written tensor by tensor (`write_safetensors`), so memory holds one tensor, not the model.
        `scalar`: the head's output layer is `(1, hidden)` = row 1 of the source's, `num_labels: 1`,
        `id2label: {0: "reward"}`, `problem_type: "regression"`, `value_head_prefix` (the head's name, `score` for
        decoders). `halos`: the source's weights with row 0 of the head set to zero, `num_labels: 2`.
        Raises `ValueError` for an unknown format, a source that is not a 2-label checkpoint, or a shard mixing dtypes.
    """
    if format not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if normalization is not None and format != "scalar":
        raise ValueError("export: normalization (OpenRLHF's mean/std) applies to the scalar format only")
    check_output_dir(output_dir, overwrite)  # before a merge that may take minutes
    parent = Path(output_dir).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(output_dir).name}.merge-", dir=parent) as scratch:
        is_adapter = (Path(model_dir) / "adapter_config.json").is_file()
        if is_adapter:
            source = merge_and_save(model_dir, Path(scratch) / "merged", dtype=dtype, from_4bit=from_4bit)
        else:
            source = local_checkpoint(model_dir)
        statistics = normalization(source) if callable(normalization) else normalization
        config = AutoConfig.from_pretrained(source)
        if config.num_labels != 2:
            raise ValueError(f"export: {model_dir} has a {config.num_labels}-label head; expected a 2-label Bradley-Terry "
                             "checkpoint (merge_and_save, AutoModelForBradleyTerry.save_pretrained) or an adapter directory")
        tokenizer = load_tokenizer(source if is_adapter else model_dir, eos_ids=eos_ids_of(config))
        added = tokenizer("")["input_ids"]  # the special tokens the tokenizer adds to every text
        if added:
            logger.warning("export: the tokenizer adds %s to every text; TRL's GRPO/RLOO tokenize plain-text prompts "
                           "without them (add_special_tokens=False), so their rewards of plain texts differ from "
                           "training (conversations are unaffected); see the README", tokenizer.convert_ids_to_tokens(added))
        if format == "scalar" and appends_eos(tokenizer):
            logger.warning("export: the model reads the reward at an eos ending every text (trained with append_eos); "
                           "OpenRLHF's sequences end with it, but TRL's GRPO/RLOO and vLLM score texts without one: "
                           "give them texts ending with %r, or score with bt_peft.score", tokenizer.eos_token)
        head = head_output_layer(reward_skeleton(config))[0]
        with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
            write_weights(source, staging, head, single_score=format == "scalar")
            bind_pad(config, tokenizer)
            if format == "scalar":
                single_score_config(config, head, statistics)
            config.save_pretrained(staging)
            write_num_labels(staging / "config.json", config.num_labels)
            tokenizer.save_pretrained(staging)
            write_model_card(staging, base_model=base_model_of(model_dir, is_adapter), single_score=format == "scalar",
                             metrics=None if statistics is None else {"reward mean (normalization)": statistics[0],
                                                                      "reward std (normalization)": statistics[1]})
    return Path(output_dir)


def single_score_config(config: PretrainedConfig, head: str, statistics: tuple[float, float] | None) -> None:
    """Make a 2-label reward config the scalar export's, in place: 1 label named `reward`, `problem_type:
    "regression"`, OpenRLHF's `value_head_prefix` (`head`, e.g. `score`) and, with `statistics`, its `mean`/`std`."""
    config.num_labels = 1
    config.id2label = {0: "reward"}
    config.label2id = {"reward": 0}
    config.problem_type = "regression"
    config.value_head_prefix = head.split(".", 1)[0]
    if statistics is not None:
        mean, std = statistics
        config.normalize_reward = True
        config.mean, config.std = float(mean), max(float(std), 1e-8)  # OpenRLHF clamps std the same way


def write_num_labels(config_file: Path, num_labels: int) -> None:
    """Add `num_labels` to a written `config.json`: transformers 5 leaves it out (it follows from `id2label`), but
    tools that read the JSON itself look for it."""
    content = json.loads(config_file.read_text())
    content["num_labels"] = num_labels
    config_file.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def write_weights(source: Path, output_dir: Path, head: str, single_score: bool) -> None:
    """Copy the safetensors files of `source` into `output_dir` tensor by tensor, with the head's output layer `head`
    changed: its row 1 alone with `single_score`, else row 0 set to zero. Same file names, keys and order; the
    index (for a sharded checkpoint) is rewritten with the new sizes."""
    tensors = checkpoint_tensors(source)
    head_keys = {f"{head}.weight", f"{head}.bias"} & set(tensors)
    if f"{head}.weight" not in head_keys or tensors[f"{head}.weight"][1][0] != 2:
        raise ValueError(f"export: {source} has no 2-row head weight {head}.weight")

    def exported(path: Path, key: str) -> torch.Tensor:
        tensor = read_tensor(path, key)
        if key in head_keys:
            tensor = tensor[1:].clone() if single_score else zero_unused_row(tensor.clone())
        return tensor

    total_size = removed = 0
    for path in sorted({path for path, _ in tensors.values()}):
        keys = [key for key, (file, _) in tensors.items() if file == path]
        dtype = file_dtype(path, keys)
        shapes = {key: [1, *tensors[key][1][1:]] if single_score and key in head_keys else tensors[key][1] for key in keys}
        write_safetensors(output_dir / path.name, shapes, dtype, lambda key, path=path: exported(path, key))
        total_size += sum(torch.Size(shape).numel() for shape in shapes.values()) * dtype.itemsize
        removed += sum(torch.Size(tensors[key][1]).numel() - torch.Size(shapes[key]).numel() for key in keys)
    index = source / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        content = json.loads(index.read_text())
        content["metadata"]["total_size"] = total_size
        if "total_parameters" in content["metadata"]:
            content["metadata"]["total_parameters"] -= removed
        (output_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def base_model_of(model_dir: str | os.PathLike, is_adapter: bool) -> str:
    """The base model named in the source's model card (or adapter config), else `model_dir` itself."""
    if is_adapter:
        from peft import PeftConfig

        return str(PeftConfig.from_pretrained(model_dir).base_model_name_or_path)
    card = Path(model_dir) / "README.md"
    base = ModelCard.load(card).data.base_model if card.is_file() else None
    return str(base or model_dir)
