"""`RunFinisher`: the end of a recipe run in one call, and the little it must see of the run while it trains.

    finisher = RunFinisher(script_args, training_args, model_args)  # refuses existing outputs now, not after training
    trainer = BradleyTerryRewardTrainer(model=..., args=training_args, ..., callbacks=[finisher])
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    summary = finisher.finish(trainer, dev)

As a callback it records the step training starts at and has the trainer evaluate before training, inside `train()`
(an `evaluate()` call before `train()` marks the model as prepared, and `train()` then skips the DDP wrapper, so each
process of a multi-process launch would train alone); a resumed run's evaluation before training is the one in its
checkpoint's log history. `finish` then evaluates after training, saves the adapter, scores a few evaluation pairs with
the trained model on every process (the forward of a sharded model, FSDP or ZeRO-3, gathers each layer from all of
them) and, on the main process only, merges, checks the merge, writes `summary.json`, the model card and the scalar
export.
"""

import gc
import itertools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import unset_hf_deepspeed_config

from .atomic import check_output_dir, write_json_atomically
from .embedded import resolve_model
from .evaluation.merge_check import compare_with_merged, pair_texts
from .evaluation.scoring import score
from .export.merge import merge_and_save
from .export.model_card import training_settings, write_model_card
from .export.reward_export import export_reward_model

if TYPE_CHECKING:
    from .training.model_config import BradleyTerryModelConfig
    from .training.script_arguments import BradleyTerryScriptArguments
    from .training.trainer import BradleyTerryRewardTrainer

logger = logging.getLogger(__name__)


def evaluation_before_training(log_history: list[dict]) -> dict | None:
    """The first evaluation in a `TrainerState.log_history` (its `eval_loss`, `eval_accuracy`, ...), or None."""
    return next((entry for entry in log_history if "eval_loss" in entry), None)


def release_weights(model: torch.nn.Module) -> None:
    """Free the memory of `model`'s parameters and buffers in place: each keeps its dtype and device but no elements,
    so the memory is released even while other names (a script's `model`, the trainer) still refer to the model,
    which cannot be used afterwards."""
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    gc.collect()
    torch.cuda.empty_cache()


class RunFinisher(TrainerCallback):
    """The end of a training run: evaluation after training, adapter, merge, merge check, summary, card, scalar export.

    Args:
        script_args (`BradleyTerryScriptArguments`): `merge_dtype`, `merge_from_4bit`, `export_scalar`,
            `num_score_examples`, `merge_check_host_gb`, `overwrite_outputs`; `dataset_name` for the card.
        training_args (`BradleyTerryRewardConfig`): `output_dir` (the outputs go in `adapter/`, `merged/`, `scalar/`
            and `summary.json` there), `max_length`, `hub_model_id` (the card's loading code) and the card's settings.
        model_args (`BradleyTerryModelConfig`): the base model and the card's LoRA settings.

    Raises:
        `FileExistsError` at construction, before any training, when an output directory is not empty and
        `overwrite_outputs` is off.

    Pass it to the trainer as a callback (`callbacks=[finisher]`), then call `finish` after `train()`.
    """

    def __init__(self, script_args: "BradleyTerryScriptArguments", training_args: TrainingArguments,
                 model_args: "BradleyTerryModelConfig"):
        self.script_args, self.training_args, self.model_args = script_args, training_args, model_args
        output = Path(training_args.output_dir)
        self.adapter_dir, self.merged_dir = output / "adapter", output / "merged"
        self.summary_path = output / "summary.json"
        self.scalar_dir = output / "scalar" if script_args.export_scalar else None
        for target in filter(None, (self.adapter_dir, self.merged_dir, self.scalar_dir)):
            check_output_dir(target, script_args.overwrite_outputs)
        self.start_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        """Record the step training starts at (a resumed run: its checkpoint's) and have the trainer evaluate before
        training unless the run resumes, whose checkpoint's log history must then hold that evaluation."""
        self.start_step = state.global_step
        if self.start_step and evaluation_before_training(state.log_history) is None:
            raise ValueError(f"resuming at step {self.start_step}: the checkpoint's log history has no evaluation "
                             "before training (not a checkpoint of a RunFinisher run); start again in a new output_dir")
        args.eval_on_start = not self.start_step

    def finish(self, trainer: "BradleyTerryRewardTrainer", dev: Dataset) -> dict:
        """End the run `trainer.train()` has just done, with this finisher among the trainer's callbacks.

        Args:
            trainer (`BradleyTerryRewardTrainer`): trained; the trained model's memory is released on the main
                process once the adapter is saved and scored (use the adapter or the merged checkpoint afterwards).
            dev (`datasets.Dataset`): the evaluation pairs as loaded (the trainer's `eval_dataset` before
                preparation); the first `num_score_examples` are scored with the trained and the merged model.

        Returns:
            `dict`: the summary written to `summary.json`: the model, eval accuracy/loss before and after training,
            train seconds (the trainer's `train_runtime` without the evaluation before training) and seconds per
            step, steps, `resumed_from_step`, processes, the data preparation reports, the output directories, the
            script arguments and the merge check (`merged_vs_trained_max_abs_reward_diff`, `scored_pairs`,
            `merge_check`: status "done", "skipped" or "failed" with the error). Processes other than the main one
            return the training part, without merging.

        Raises:
            the merge check's error, once `summary.json` (which reports it), the model card and the scalar export are
            written; `ValueError` when the trainer did not have this finisher as a callback during training.
        """
        if self not in trainer.callback_handler.callbacks:
            raise ValueError("RunFinisher.finish: the trainer did not have this finisher among its callbacks "
                             "(callbacks=[finisher]) in training, so it did not evaluate before training")
        summary = self.training_summary(trainer)
        texts = pair_texts(dev.select(range(min(self.script_args.num_score_examples, len(dev)))))
        trained_rewards = score(trainer.model, trainer.processing_class, texts,
                                max_length=self.training_args.max_length)
        trainer.accelerator.wait_for_everyone()  # the adapter is complete on disk
        if not trainer.accelerator.is_main_process:
            return summary
        release_weights(trainer.model)  # the merge check may then use the memory the trained model held
        unset_hf_deepspeed_config()  # training is over: the merge and its check load whole models in this process
        merge_and_save(self.adapter_dir, self.merged_dir, dtype=getattr(torch, self.script_args.merge_dtype),
                       base_model_name_or_path=summary["model"], from_4bit=self.script_args.merge_from_4bit,
                       overwrite=self.script_args.overwrite_outputs)
        check, check_error = self.check_merge(texts, trained_rewards)
        summary |= check
        write_json_atomically(summary, self.summary_path)
        self.write_card(summary, eval_pairs=len(dev))
        if self.scalar_dir:
            export_reward_model(self.merged_dir, self.scalar_dir, overwrite=self.script_args.overwrite_outputs)
        if check_error is not None:
            raise check_error
        return summary

    def training_summary(self, trainer: "BradleyTerryRewardTrainer") -> dict:
        """Evaluate after training, save the adapter (main process), and return the training part of the summary."""
        history = trainer.state.log_history
        before = evaluation_before_training(history)
        runtime = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
        train_seconds = runtime - (0 if self.start_step else before["eval_runtime"])
        after = trainer.evaluate()
        trainer.save_model(str(self.adapter_dir), overwrite=self.script_args.overwrite_outputs)
        steps = trainer.state.global_step
        return {
            "model": resolve_model(self.model_args.model_name_or_path),
            "eval_accuracy_before": before["eval_accuracy"], "eval_accuracy_after": after["eval_accuracy"],
            "eval_loss_before": before["eval_loss"], "eval_loss_after": after["eval_loss"],
            "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(steps - self.start_step, 1), 3),
            "steps": steps, "resumed_from_step": self.start_step, "processes": self.training_args.world_size,
            "data": {name: str(report) for name, report in trainer.preparation_reports.items()},
            "adapter_dir": str(self.adapter_dir), "merged_dir": str(self.merged_dir),
            "script_args": asdict(self.script_args),
        }

    def check_merge(self, texts: list, trained_rewards: torch.Tensor) -> tuple[dict, Exception | None]:
        """The merged checkpoint's rewards of `texts` next to the trained ones (`compare_with_merged`), within the
        host-RAM budget `merge_check_host_gb`. Returns (the summary's merge-check part, the check's error or None):
        whatever happens to the check, the run's outputs are written before its error ends the run."""
        if not texts:
            reason = "num_score_examples is 0 (or no evaluation pairs)"
            return {"merge_check": {"status": "skipped", "reason": reason}}, None
        host_gb = self.script_args.merge_check_host_gb
        try:
            return compare_with_merged(self.merged_dir, texts, trained_rewards, self.training_args.max_length,
                                       None if host_gb is None else int(host_gb * 1e9)), None
        except Exception as error:  # reported in the summary, raised again once the outputs are written
            logger.error("merge check failed: %s: %s", type(error).__name__, error)
            return {"merge_check": {"status": "failed", "error": f"{type(error).__name__}: {error}"}}, error

    def write_card(self, summary: dict, eval_pairs: int) -> None:
        """The merged checkpoint's model card: base model, data, training settings, evaluation before and after."""
        write_model_card(
            self.merged_dir, base_model=self.model_args.model_name_or_path, dataset=self.script_args.dataset_name,
            training_settings=training_settings(self.training_args, self.model_args, summary["steps"]),
            metrics={"eval pairs": eval_pairs,
                     "eval accuracy before training": summary["eval_accuracy_before"],
                     "eval accuracy after training": summary["eval_accuracy_after"],
                     "eval loss before training": summary["eval_loss_before"],
                     "eval loss after training": summary["eval_loss_after"]},
            from_4bit=self.script_args.merge_from_4bit, repo_id=self.training_args.hub_model_id,
        )
