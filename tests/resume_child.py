"""What the crash-and-resume child scripts of `test_resume` and `test_resume_distributed` share: the batch log and
the training run of each mode, on the tests' 16 preference pairs with LoRA dropout on (TRL turns dropout off by
default; with it on, each step draws from the torch RNG, so resuming must restore the RNG state).

Modes: "crash" trains in `<output>/run` until the script's trainer blocks (the test then kills it); "resume" resumes
in the same directory from its last complete checkpoint; "full" runs uninterrupted in `<output>/run-full`. Each mode
saves its final adapter and head in `<output>/final-<mode>`.
"""

import hashlib
import json
from pathlib import Path

import torch
from datasets import Dataset

from bt_peft import BradleyTerryRewardConfig, BradleyTerryRewardTrainer, load_qlora_model
from conftest import preference_rows


def log_batch(log: Path, step: int, inputs: dict) -> None:
    """Append `[step, sha256 of the batch's input ids]` to the JSONL file `log`."""
    digest = hashlib.sha256(inputs["input_ids"].numpy().tobytes()).hexdigest()
    with open(log, "a") as file:
        file.write(json.dumps([step, digest]) + "\n")


def train_modes(trainer_class: type[BradleyTerryRewardTrainer], model_dir: str, output: Path, modes: list[str],
                **settings) -> None:
    """Run each mode in turn, in this process: 8 steps, a checkpoint every 3, fp32 on one thread, seed 0.

    Args:
        trainer_class: the script's recording `BradleyTerryRewardTrainer` subclass; it gets `mode` as an attribute.
        model_dir (`str`): the tiny causal-LM checkpoint, loaded in 4-bit with LoRA dropout 0.1.
        output (`Path`): the test's directory (see the module docstring for what goes where).
        modes (`list[str]`): "crash", "resume" and/or "full".
        **settings: further `BradleyTerryRewardConfig` fields (batch size, batch layout, `use_cpu`).
    """
    torch.set_num_threads(1)
    for mode in modes:
        torch.manual_seed(0)
        model, tokenizer = load_qlora_model(model_dir, compute_dtype=torch.float32, lora_dropout=0.1)
        args = BradleyTerryRewardConfig(
            output_dir=str(output / ("run-full" if mode == "full" else "run")), max_steps=8, learning_rate=5e-3,
            bf16=False, report_to=[], save_strategy="steps", save_steps=3, max_length=64, seed=0, disable_tqdm=True,
            disable_dropout=False, **settings)
        trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(preference_rows()),
                                processing_class=tokenizer)
        trainer.mode = mode
        trainer.train(resume_from_checkpoint=(mode == "resume") or None)
        trainer.save_model(str(output / f"final-{mode}"))
