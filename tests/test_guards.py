import hashlib
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState

from bt_peft import BradleyTerryRewardTrainer, load_qlora_model
from bt_peft.training.checkpointing import checkpoint_problems
from bt_peft.training.guards import NonFiniteGuard, NonFiniteLossError
from conftest import fp32_args, preference_rows


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


class Snapshot(TrainerCallback):
    """File digests of each checkpoint right after the Trainer wrote it."""

    def __init__(self):
        self.seen = {}

    def on_save(self, args, state, control, **kwargs):
        self.seen[state.global_step] = digests(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def test_a_diverging_run_stops_before_the_optimizer_step_and_keeps_its_last_checkpoint(tiny_llama_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    with torch.no_grad():  # a head that has moved (a zero head would pass no gradient to LoRA at step 1)
        model.get_base_model().score.modules_to_save["default"].weight.normal_(0, 0.02)
    # a learning rate of 1e30: step 1 (from the initial weights) is finite, then the LoRA weights overflow fp32
    args = fp32_args(tmp_path, max_steps=6, learning_rate=1e30, lr_scheduler_type="constant", save_strategy="steps",
                     save_steps=1)
    trainer = BradleyTerryRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows()),
                                        processing_class=tokenizer)
    snapshot = Snapshot()
    trainer.add_callback(snapshot)

    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    step = trainer.state.global_step
    message = str(error.value)
    assert f"non-finite loss nan at step {step + 1} (learning rate 1e+30, fp16 off, bf16 off)" in message
    assert f"the weights are those of step {step}; last checkpoint: {tmp_path / f'checkpoint-{step}'}" in message
    assert "fp16 overflow (train in bf16 or fp32), a learning rate too high" in message

    assert step >= 1 and sorted(snapshot.seen) == list(range(1, step + 1))
    assert not (tmp_path / f"checkpoint-{step + 1}").exists()
    last = tmp_path / f"checkpoint-{step}"
    assert digests(last) == snapshot.seen[step] and checkpoint_problems(last) == []  # unchanged, complete
    # the weights in memory are still those of the last checkpoint: the bad step was never applied
    saved, in_memory = load_file(last / "adapter_model.safetensors"), get_peft_model_state_dict(trainer.model)
    assert saved.keys() == in_memory.keys() and any("score" in name for name in saved)
    for name, tensor in in_memory.items():
        assert torch.isfinite(tensor).all() and torch.equal(saved[name], tensor), name


def test_a_non_finite_gradient_is_caught_with_the_parameter_named(tmp_path):
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[0.5, float("inf")]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = NonFiniteGuard()
    guard.record_loss(torch.tensor(0.7))
    args, state = fp32_args(tmp_path), TrainerState(global_step=7)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient of weight at step 8 \(learning rate 0.01, fp16 off"):
        guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model, optimizer=optimizer)
    model.weight.grad = torch.ones(1, 2)
    guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model, optimizer=optimizer)  # finite: passes
