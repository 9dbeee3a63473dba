"""Stop training at the first non-finite loss or gradient, before the optimizer step spoils the weights."""

import math

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .checkpointing import last_complete_checkpoint


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss or gradient; raised before the optimizer step, so the weights and the
    checkpoints already written are those of the last good step."""


class NonFiniteGuard(TrainerCallback):
    """Raises `NonFiniteLossError` in `on_pre_optimizer_step` when a loss of the step (recorded by the trainer's
    `training_step` through `record_loss`) or a trainable parameter's gradient is NaN/inf.

    Gradients are not checked under fp16 mixed precision: there an inf gradient is the gradient scaler's normal
    signal to skip the step and lower its scale; the loss still is.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def record_loss(self, loss: torch.Tensor) -> None:
        """Keep one micro-batch's loss (detached, no device sync) for the check before the optimizer step."""
        self.losses.append(loss.detach().float().reshape(()))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                              **kwargs) -> None:
        """Check the step's recorded losses, then (not under fp16) the gradients of `model`.

        Args:
            args, state, control: the Trainer's; `state.global_step + 1` is the step being taken.
            model (`torch.nn.Module`): the model whose `.grad`s are about to be applied.
            optimizer (`torch.optim.Optimizer`): its first group's learning rate goes into the message.

        Raises:
            `NonFiniteLossError` naming the step, the loss value or the parameter, the learning rate, fp16/bf16, the
            last complete checkpoint, and the likely causes.
        """
        losses = torch.stack(self.losses) if self.losses else torch.zeros(0)
        self.losses = []
        bad_loss = losses[~torch.isfinite(losses)]
        if len(bad_loss):
            self._stop(f"loss {bad_loss[0].item()}", args, state, optimizer)
        if model is None or args.fp16:
            return
        grads = [(name, param.grad) for name, param in model.named_parameters() if param.grad is not None]
        finite = torch.stack([torch.isfinite(grad).all() for _, grad in grads]) if grads else torch.ones(0, dtype=torch.bool)
        if not finite.all():  # one device sync per step
            self._stop(f"gradient of {grads[int((~finite).nonzero()[0])][0]}", args, state, optimizer)

    @staticmethod
    def _stop(what: str, args: TrainingArguments, state: TrainerState, optimizer: torch.optim.Optimizer | None) -> None:
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else math.nan
        checkpoint = last_complete_checkpoint(args.output_dir) or "none yet"
        raise NonFiniteLossError(
            f"non-finite {what} at step {state.global_step + 1} (learning rate {lr:.3g}, fp16 {'on' if args.fp16 else 'off'}"
            f", bf16 {'on' if args.bf16 else 'off'}): training stopped before the optimizer step; the weights are those "
            f"of step {state.global_step}; last checkpoint: {checkpoint}. Likely causes: "
            "fp16 overflow (train in bf16 or fp32), a learning rate too high (lower it or warm up), or extreme data "
            "(huge margins). Resume from the checkpoint once fixed."
        )


class NonFiniteGuardMixin:
    """Mixed into a Trainer subclass that registers `self.non_finite_guard = NonFiniteGuard()` as a callback:
    hands it every micro-batch's loss."""

    def training_step(self, model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.non_finite_guard.record_loss(loss)
        return loss
