"""Train a Bradley-Terry reward model with QLoRA, evaluate it before and after, merge it and check the merge.

    python recipes/qlora_llama3.py --config recipes/configs/llama3_8b_hh.yaml      # one 24 GB GPU
    python recipes/qlora_llama3.py --config recipes/configs/demo_smollm2.yaml      # offline CPU demo, minutes
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/qlora_llama3.py --config ...

Any field of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-5 --max_steps 100`.
`bt-peft train --config ...` runs this same file: the package's `bt_peft/recipe.py` is a link to it. Copy it to
adapt the flow; it only uses bt-peft's public functions.

Writes `<output_dir>/adapter` (adapter, head, tokenizer), `<output_dir>/merged` (a plain 2-label checkpoint with its
model card), with `--export_scalar` `<output_dir>/scalar` (the 1-label export of `bt-peft export`)
and `<output_dir>/summary.json`: eval accuracy/loss before and after training, train seconds, and the
rewards that the merged checkpoint, loaded with plain transformers, gives a few dev pairs next to the trained model's.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, TrlParser

from bt_peft import (BradleyTerryRewardConfig, BradleyTerryRewardTrainer, export_reward_model, load_qlora_model, merge_and_save,
                     write_model_card)
from bt_peft.atomic import check_output_dir, write_json_atomically
from bt_peft.data import load_split
from bt_peft.embedded import resolve_model
from bt_peft.evaluation.scoring import compare_with_merged
from bt_peft.export.model_card import training_settings
from bt_peft.validation import validate_training_setup


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
    export_scalar: bool = field(default=False, metadata={"help": "also write <output_dir>/scalar: the 1-label export (bt-peft export) for TRL GRPO/RLOO, OpenRLHF, vLLM"})
    num_score_examples: int = field(default=4, metadata={"help": "evaluation pairs scored with the merged checkpoint"})
    overwrite_outputs: bool = field(
        default=False, metadata={"help": "replace existing <output_dir>/adapter and /merged (else refused before training)"}
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Parse `argv` (default `sys.argv[1:]`: `--config FILE.yaml` and field overrides), train, evaluate, merge.
    Returns the summary; in a multi-process launch the processes other than the main one return the training part."""
    parser = TrlParser((BradleyTerryScriptArguments, BradleyTerryRewardConfig, ModelConfig), prog=prog,
                       description="Train a QLoRA Bradley-Terry reward model, evaluate it, merge it. --config FILE.yaml "
                       "sets any of the fields below; flags override it.")
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    output = Path(training_args.output_dir)
    adapter_dir, merged_dir = output / "adapter", output / "merged"
    scalar_dir = output / "scalar" if script_args.export_scalar else None
    for target in filter(None, (adapter_dir, merged_dir, scalar_dir)):  # refuse before hours of training, not after
        check_output_dir(target, script_args.overwrite_outputs)

    # The model: 4-bit NF4 base, LoRA on the attention projections, the 2-label head in fp32 and trained.
    model_path = resolve_model(model_args.model_name_or_path)
    validate_training_setup(training_args, model_path, load_in_4bit=True, trust_remote_code=training_args.trust_remote_code)
    set_seed(training_args.seed)  # LoRA's initialisation and the data order are part of the run
    model, tokenizer = load_qlora_model(
        model_path, compute_dtype=getattr(torch, model_args.dtype), lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules, gradient_checkpointing=training_args.gradient_checkpointing,
        attn_implementation=model_args.attn_implementation, trust_remote_code=training_args.trust_remote_code,
        quant_storage=getattr(torch, model_args.bnb_4bit_quant_storage) if model_args.bnb_4bit_quant_storage else None,
    )

    # The data: preference pairs (the trainer tokenizes them and cuts long ones from the left).
    splits = [(script_args.dataset_train_split, script_args.max_train_samples),
              (script_args.dataset_test_split, script_args.max_eval_samples)]
    train, dev = (load_split(script_args.dataset_name, name, limit, config=script_args.dataset_config,
                             data_dir=script_args.dataset_data_dir) for name, limit in splits)

    # Train, evaluating before (inside `train()`: an `evaluate()` call before `train()` marks the model as prepared
    # and `train()` then skips the DDP wrapper, so each process of a multi-process launch would train alone) and after.
    trainer = BradleyTerryRewardTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                                        processing_class=tokenizer)
    training_args.eval_on_start = True
    start = time.perf_counter()
    trainer.train()
    before = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
    train_seconds = time.perf_counter() - start - before["eval_runtime"]
    after = trainer.evaluate()
    trainer.save_model(str(adapter_dir), overwrite=script_args.overwrite_outputs)  # by the main process only
    steps = trainer.state.global_step
    summary = {
        "model": model_path,
        "eval_accuracy_before": before["eval_accuracy"], "eval_accuracy_after": after["eval_accuracy"],
        "eval_loss_before": before["eval_loss"], "eval_loss_after": after["eval_loss"],
        "train_seconds": round(train_seconds, 1), "seconds_per_step": round(train_seconds / max(steps, 1), 3),
        "steps": steps, "processes": training_args.world_size,
        "data": {name: str(report) for name, report in trainer.preparation_reports.items()},
        "adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir), "script_args": asdict(script_args),
    }
    trainer.accelerator.wait_for_everyone()  # the adapter is complete on disk
    if not trainer.accelerator.is_main_process:
        return summary

    # Merge into a plain 2-label checkpoint, reload it with plain transformers and score a few dev pairs with both.
    merge_and_save(adapter_dir, merged_dir, dtype=getattr(torch, script_args.merge_dtype),
                   base_model_name_or_path=model_path, from_4bit=script_args.merge_from_4bit,
                   overwrite=script_args.overwrite_outputs)
    examples = dev.select(range(min(script_args.num_score_examples, len(dev))))
    summary |= compare_with_merged(merged_dir, trainer.model, tokenizer, examples, training_args.max_length)
    write_json_atomically(summary, output / "summary.json")
    write_model_card(
        merged_dir, base_model=model_args.model_name_or_path, dataset=script_args.dataset_name,
        training_settings=training_settings(training_args, model_args, steps),
        metrics={"eval pairs": len(dev),
                 "eval accuracy before training": before["eval_accuracy"], "eval accuracy after training": after["eval_accuracy"],
                 "eval loss before training": before["eval_loss"], "eval loss after training": after["eval_loss"]},
        from_4bit=script_args.merge_from_4bit, repo_id=training_args.hub_model_id,
    )
    if scalar_dir:
        export_reward_model(merged_dir, scalar_dir, overwrite=script_args.overwrite_outputs)
    print(json.dumps({key: value for key, value in summary.items() if key != "script_args"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
