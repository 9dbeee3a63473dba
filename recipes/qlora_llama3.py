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

import gc
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerState, set_seed
from trl import ScriptArguments, TrlParser

from bt_peft import (BradleyTerryRewardConfig, BradleyTerryRewardTrainer, export_reward_model, load_qlora_model, merge_and_save,
                     write_model_card)
from bt_peft.atomic import check_output_dir, write_json_atomically
from bt_peft.data import load_split
from bt_peft.embedded import resolve_model
from bt_peft.evaluation.merge_check import compare_with_merged, pair_texts
from bt_peft.evaluation.scoring import score
from bt_peft.export.model_card import training_settings
from bt_peft.training.checkpointing import last_complete_checkpoint
from bt_peft.training.model_config import BradleyTerryModelConfig
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
    num_score_examples: int = field(
        default=4, metadata={"help": "evaluation pairs scored with the merged checkpoint (0: no merge check)"}
    )
    merge_check_host_gb: float | None = field(
        default=None, metadata={"help": "host RAM (GB) the merge check may fill with merged weights beyond the GPU's "
                                "free memory; the rest is streamed from disk (default: a quarter of the model's bf16 size)"}
    )
    overwrite_outputs: bool = field(
        default=False, metadata={"help": "replace existing <output_dir>/adapter and /merged (else refused before training)"}
    )

    def __post_init__(self):
        refused = {
            "dataset_streaming": (self.dataset_streaming, "the trainer needs a map-style dataset"),
            "ignore_bias_buffers": (self.ignore_bias_buffers, "bt-peft's models have no boolean buffers for DDP to skip"),
            "merge_dtype": (self.merge_dtype not in ("bfloat16", "float32", "float16"), "bfloat16, float32 or float16"),
        }
        problems = [f"{name}={getattr(self, name)!r}: {reason}" for name, (bad, reason) in refused.items() if bad]
        if problems:
            raise ValueError("unsupported script settings: " + "; ".join(problems))


def show_bt_peft_info_on_stdout() -> None:
    """The library logs (`logging`); the recipe shows bt-peft's INFO messages (the data report) on stdout."""
    if not logging.getLogger("bt_peft").handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("bt_peft").addHandler(handler)
        logging.getLogger("bt_peft").setLevel(logging.INFO)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Parse `argv` (default `sys.argv[1:]`: `--config FILE.yaml` and field overrides), train, evaluate, merge.
    Returns the summary; in a multi-process launch the processes other than the main one return the training part."""
    parser = TrlParser((BradleyTerryScriptArguments, BradleyTerryRewardConfig, BradleyTerryModelConfig), prog=prog,
                       description="Train a QLoRA Bradley-Terry reward model, evaluate it, merge it. --config FILE.yaml "
                       "sets any of the fields below; flags override it.")
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    show_bt_peft_info_on_stdout()
    if training_args.model_init_kwargs:  # the recipe loads the model itself, from the model settings
        raise ValueError("model_init_kwargs: not used by the recipe, which loads the model with load_qlora_model from "
                         "the model settings (model_name_or_path, dtype, attn_implementation, ...)")
    output = Path(training_args.output_dir)
    adapter_dir, merged_dir = output / "adapter", output / "merged"
    scalar_dir = output / "scalar" if script_args.export_scalar else None
    for target in filter(None, (adapter_dir, merged_dir, scalar_dir)):  # refuse before hours of training, not after
        check_output_dir(target, script_args.overwrite_outputs)
    # `--resume_from_checkpoint true` resumes from the last complete checkpoint of output_dir, `--resume_from_checkpoint
    # PATH` from that checkpoint (as TRL's scripts do); a run killed in training has written neither adapter nor merge,
    # so the check above lets it resume.
    resume = training_args.resume_from_checkpoint
    resume = None if str(resume).lower() in ("none", "false") else resume
    if str(resume).lower() == "true":
        resume = last_complete_checkpoint(output)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint true: no complete checkpoint in {output}")
    resumed = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")) if resume else TrainerState()
    if resume and not any("eval_loss" in entry for entry in resumed.log_history):
        raise ValueError(f"{resume}: no evaluation before training in its log history (not a checkpoint of this recipe)")

    # The model: 4-bit NF4 base, LoRA on the attention projections, the 2-label head in fp32 and trained.
    model_path = resolve_model(model_args.model_name_or_path)
    validate_training_setup(training_args, model_path, load_in_4bit=True, trust_remote_code=training_args.trust_remote_code)
    set_seed(training_args.seed)  # LoRA's initialisation and the data order are part of the run
    model, tokenizer = load_qlora_model(
        model_path, compute_dtype=getattr(torch, model_args.dtype), lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules, gradient_checkpointing=training_args.activation_checkpointing,
        attn_implementation=model_args.attn_implementation, trust_remote_code=training_args.trust_remote_code,
        quant_storage=getattr(torch, model_args.bnb_4bit_quant_storage) if model_args.bnb_4bit_quant_storage else None,
        use_rslora=model_args.use_rslora, modules_to_save=model_args.lora_modules_to_save,
    )

    # The data: preference pairs (the trainer tokenizes them and cuts long ones from the left).
    splits = [(script_args.dataset_train_split, script_args.max_train_samples),
              (script_args.dataset_test_split, script_args.max_eval_samples)]
    train, dev = (load_split(script_args.dataset_name, name, limit, config=script_args.dataset_config,
                             data_dir=script_args.dataset_data_dir) for name, limit in splits)

    # Train, evaluating before (inside `train()`: an `evaluate()` call before `train()` marks the model as prepared
    # and `train()` then skips the DDP wrapper, so each process of a multi-process launch would train alone) and after.
    # A resumed run's evaluation before training is the one in the checkpoint's log history.
    trainer = BradleyTerryRewardTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                                        processing_class=tokenizer)
    training_args.eval_on_start = not resume
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    before = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
    train_seconds = time.perf_counter() - start - (0 if resume else before["eval_runtime"])
    after = trainer.evaluate()
    trainer.save_model(str(adapter_dir), overwrite=script_args.overwrite_outputs)  # by the main process only
    steps = trainer.state.global_step
    summary = {
        "model": model_path,
        "eval_accuracy_before": before["eval_accuracy"], "eval_accuracy_after": after["eval_accuracy"],
        "eval_loss_before": before["eval_loss"], "eval_loss_after": after["eval_loss"],
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(steps - resumed.global_step, 1), 3),
        "steps": steps, "resumed_from_step": resumed.global_step, "processes": training_args.world_size,
        "data": {name: str(report) for name, report in trainer.preparation_reports.items()},
        "adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir), "script_args": asdict(script_args),
    }
    # The trained rewards of a few dev pairs, for the merge check: computed by every process, since the forward of a
    # sharded model (FSDP, ZeRO-3) gathers each layer from all of them.
    texts = pair_texts(dev.select(range(min(script_args.num_score_examples, len(dev)))))
    trained_rewards = score(trainer.model, tokenizer, texts, max_length=training_args.max_length)
    trainer.accelerator.wait_for_everyone()  # the adapter is complete on disk
    if not trainer.accelerator.is_main_process:
        return summary
    del trainer, model  # the merge check may then use the memory the trained model held
    gc.collect()
    torch.cuda.empty_cache()

    # Merge into a plain 2-label checkpoint, reload it with plain transformers within a memory budget and score the
    # same pairs. Whatever happens to that check, summary.json and the model card are written, the summary saying
    # what happened; a failed check then ends the run with its error.
    merge_and_save(adapter_dir, merged_dir, dtype=getattr(torch, script_args.merge_dtype),
                   base_model_name_or_path=model_path, from_4bit=script_args.merge_from_4bit,
                   overwrite=script_args.overwrite_outputs)
    check_error = None
    if not texts:
        summary["merge_check"] = {"status": "skipped", "reason": "num_score_examples is 0 (or no evaluation pairs)"}
    else:
        host_budget = None if script_args.merge_check_host_gb is None else int(script_args.merge_check_host_gb * 1e9)
        try:
            summary |= compare_with_merged(merged_dir, texts, trained_rewards, training_args.max_length, host_budget)
        except Exception as error:  # reported in the summary, raised again once the outputs are written
            summary["merge_check"] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            check_error = error
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
    if check_error is not None:
        raise check_error
    return summary


if __name__ == "__main__":
    main()
