"""The model card (`README.md`) of a reward checkpoint, and pushing a checkpoint directory to the Hugging Face Hub."""

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

from ..reward import REWARD_LABEL
from ..tokenizer import saved_appends_eos

TAGS = ["reward-model", "bradley-terry", "qlora", "peft", "trl", "bt-peft"]
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
"""`owner/name`: only such names go into the card's `base_model`/`datasets` metadata (local paths do not)."""
REQUIRED_FILES = ("config.json", "README.md")
UPLOAD_IGNORE = [".*", "**/.*"]
"""Never uploaded: hidden files and directories (e.g. an unfinished `.merged.tmp-*` staging directory)."""


def hub_id(name: str | None) -> str | None:
    """`name` when it looks like a Hub id (`owner/name`) and is not an existing local path, else `None`."""
    if name and HUB_ID.match(name) and not Path(name).exists():
        return name
    return None


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(rows: dict, header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_value(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def evaluation_metrics(results: dict, prefix: str = "") -> dict:
    """The card's evaluation rows of an `evaluate_pairs` result.

    Args:
        results (`dict`): `evaluate_pairs` / `pair_metrics` output.
        prefix (`str`): put before each metric name, e.g. "dev " or "before training: ".

    Returns:
        `dict`: pairs, accuracy, its confidence interval (as "[low, high]"), ties, mean and median margin.
    """
    low, high = results["accuracy_ci"]
    return {
        f"{prefix}pairs": results["n_pairs"],
        f"{prefix}accuracy": results["accuracy"],
        f"{prefix}accuracy {results['confidence']:.0%} CI (Wilson)": f"[{low:.4g}, {high:.4g}]",
        f"{prefix}ties": results["ties"],
        f"{prefix}margin mean / median": f"{results['margin_mean']:.4g} / {results['margin_median']:.4g}",
    }


def training_settings(training_args, model_args, steps: int) -> dict:
    """The card's training-settings rows of a QLoRA run.

    Args:
        training_args (`trl.RewardConfig`): learning rate, scheduler, batch sizes, `max_length`, seed.
        model_args (`trl.ModelConfig`): compute dtype and LoRA settings.
        steps (`int`): optimizer steps taken.

    Returns:
        `dict`: setting name -> value.
    """
    targets = model_args.lora_target_modules  # TRL's parser turns a single target into a string
    targets = [targets] if isinstance(targets, str) else targets
    return {
        "quantization": f"NF4 with double quant, compute dtype {model_args.dtype}",
        "LoRA r / alpha / dropout": f"{model_args.lora_r} / {model_args.lora_alpha} / {model_args.lora_dropout}",
        "dropout of the base model": "off (disable_dropout)" if training_args.disable_dropout else "as its config says",
        "LoRA targets": ", ".join(targets or []) or "attention projections",
        "LoRA scaling": "alpha / sqrt(r) (rsLoRA)" if model_args.use_rslora else "alpha / r",
        "trained in full": ", ".join(["the head"] + list(model_args.lora_modules_to_save or [])),
        "learning rate": training_args.learning_rate,
        "scheduler": str(training_args.lr_scheduler_type.value),
        "optimizer steps": steps,
        "batch size (per device x accumulation x devices)": f"{training_args.per_device_train_batch_size} x "
        f"{training_args.gradient_accumulation_steps} x {training_args.world_size}",
        "max_length": training_args.max_length,
        "eos ending every sequence (append_eos)": getattr(training_args, "append_eos", False),
        "seed": training_args.seed,
    }


def _merge_note(from_4bit: bool | None) -> str:
    if from_4bit is None:
        return ""
    if from_4bit:
        return (
            "The base was quantized to NF4 as in training and dequantized before merging (the exact route): this "
            "checkpoint computes the rewards the trained 4-bit model computed."
        )
    return (
        "The adapter was merged into the original (not NF4-quantized) base weights: the rewards differ from the "
        "trained 4-bit model's by the NF4 quantization error of the base (the adapter and head are exact). Merge "
        "with `from_4bit=True` for the exact route."
    )


def render_model_card(
    *,
    base_model: str,
    dataset: str | None = None,
    training_settings: dict | None = None,
    metrics: dict | None = None,
    from_4bit: bool | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    single_score: bool = False,
    append_eos: bool = False,
) -> ModelCard:
    """The model card of a Bradley-Terry reward checkpoint (see `write_model_card` for the arguments).

    Returns:
        `huggingface_hub.ModelCard`: YAML metadata (`base_model` and `datasets` when they are Hub ids,
        `library_name: transformers`, `pipeline_tag: text-classification`, `TAGS`, `license`) and a body: what the
        model is, the reward convention (`logits[:, 1]`; `logits[:, 0]` of a 1-label head with `single_score`, the
        form `export_reward_model` writes), loading code, training settings, evaluation, merge note.
    """
    reward_index = 0 if single_score else REWARD_LABEL
    data = ModelCardData(
        base_model=hub_id(base_model),
        datasets=[hub_id(dataset)] if hub_id(dataset) else None,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=TAGS,
        license=license,
    )
    model_id = repo_id or "path/to/this/directory"
    sections = [
        "# Bradley-Terry reward model",
        f"A reward model fine-tuned from `{base_model}`"
        + (f" on `{dataset}`" if dataset else "")
        + " with QLoRA (4-bit NF4 base, LoRA adapters, Bradley-Terry loss) by bt-peft, then merged into a plain "
        + ("1-label (single score, `problem_type: regression`) " if single_score else "2-label ")
        + "sequence-classification checkpoint.",
        "## Reward convention",
        (f"The reward of a sequence is `logits[:, 0]`, the single output of the head, read at the last non-padding "
         "token (TRL's GRPO/RLOO, OpenRLHF with `--value_head_prefix score`, vLLM and pipelines read it as it is). "
         if single_score else
         f"The reward of a sequence is `logits[:, {REWARD_LABEL}]` of the 2-label head, read at the last "
         "non-padding token (`id2label = {0: unused, 1: reward}`; logit 0 is unused and exactly zero). ")
        + ("Tokenize a text as `tokenizer(text)` and a conversation with the chat template, trailing newlines removed, "
           "and end it with the eos token `tokenizer.eos_token` (add it when it is missing): the model was trained with "
           "an eos ending every sequence and reads the reward there (OpenRLHF's convention). "
           if append_eos else
           "Tokenize a text as `tokenizer(text)` and a conversation with the chat template, without appending an eos: "
           "that is how the model was trained. ")
        + "The pad token is not the eos token; keep the tokenizer's.",
        "## Usage",
        "```python\nimport torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        f'model = AutoModelForSequenceClassification.from_pretrained("{model_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")\n'
        'inputs = tokenizer("\\n\\nHuman: How do I bake bread?\\n\\nAssistant: Mix flour, water, salt and yeast.'
        + ('" + tokenizer.eos_token, ' if append_eos else '", ')
        + 'return_tensors="pt")\n'
        "with torch.no_grad():\n"
        f"    reward = model(**inputs).logits[:, {reward_index}]\n```",
    ]
    if training_settings:
        sections += ["## Training settings", _table(training_settings, ("setting", "value"))]
    if metrics:
        sections += ["## Evaluation", _table(metrics, ("metric", "value"))]
    if from_4bit is not None:
        sections += ["## Merge", _merge_note(from_4bit)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_model_card(output_dir: str | os.PathLike, **card_fields: Any) -> Path:
    """Write `README.md` (the Hugging Face model card) into a reward checkpoint directory.

    Args:
        output_dir (`str`): an existing checkpoint directory (merged model or adapter).
        **card_fields: keyword arguments of `render_model_card`:
            base_model (`str`): the base model's Hub id or path (put in the metadata only when it is a Hub id).
            dataset (`str`, *optional*): the training data's Hub id or path (metadata only when a Hub id).
            training_settings (`dict`, *optional*): setting name -> value, shown as a table (learning rate, steps, …).
            metrics (`dict`, *optional*): metric name -> value (accuracy, its 95% CI, …), shown as a table.
            from_4bit (`bool`, *optional*): how the merge was done (`merge_and_save`'s `from_4bit`); `None`: no note.
            repo_id (`str`, *optional*): the Hub repo the checkpoint is pushed to, used in the loading code.
            license (`str`, *optional*): licence id for the metadata (the base model's licence usually applies).
            single_score (`bool`): the card of a 1-label export (`export_reward_model(format="scalar")`).
            append_eos (`bool`, *optional*): trained with an eos ending every sequence; default: what the tokenizer
                saved in `output_dir` records (`bt_peft.tokenizer.saved_appends_eos`).

    Returns:
        `Path` of the written `README.md`; `huggingface_hub.ModelCard.load` parses its metadata.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise NotADirectoryError(f"model card: {output_dir} is not a directory")
    card_fields.setdefault("append_eos", saved_appends_eos(output_dir))
    card = render_model_card(**card_fields)
    path = output_dir / "README.md"
    card.save(path)
    return path


def upload_files(output_dir: str | os.PathLike) -> list[str]:
    """The files `push_to_hub` uploads: every file under `output_dir` except those matching `UPLOAD_IGNORE`.

    Returns:
        `list[str]`: sorted POSIX paths relative to `output_dir`.
    """
    output_dir = Path(output_dir)
    paths = [path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=UPLOAD_IGNORE))


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload Bradley-Terry reward model (bt-peft)",
) -> str:
    """Upload a checkpoint directory (weights, config, tokenizer, model card) to a Hub model repo.

    Args:
        output_dir (`str`): the directory, e.g. from `merge_and_save`; it must hold `config.json` and `README.md`
            (write the card first with `write_model_card`).
        repo_id (`str`): `owner/name` of the model repo; created when missing.
        private (`bool`): create the repo private (an existing repo keeps its visibility).
        token (`str`, *optional*): Hub token; default: the logged-in one (`hf auth login`, `HF_TOKEN`).
        commit_message (`str`): the commit's message.

    Returns:
        `str`: the URL of the commit, which holds `upload_files(output_dir)`.
    """
    output_dir = Path(output_dir)
    missing = [name for name in REQUIRED_FILES if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"push_to_hub: {output_dir} lacks {', '.join(missing)} (write the model card first)")
    if not HUB_ID.match(repo_id):
        raise ValueError(f"push_to_hub: repo_id must be 'owner/name', got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=output_dir, commit_message=commit_message, allow_patterns=upload_files(output_dir)
    )
    return commit.commit_url
