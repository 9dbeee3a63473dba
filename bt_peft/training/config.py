"""`BradleyTerryRewardConfig`: TRL's `RewardConfig` plus the switches of shared-prefix packing."""

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments
from trl import RewardConfig

REWARD_DEFAULTS: dict[str, Any] = {
    "max_length": 1024, "center_rewards_coefficient": None, "disable_dropout": True, "model_init_kwargs": None,
    "trust_remote_code": False, "pad_to_multiple_of": None,
}
"""The `RewardConfig` fields `BradleyTerryRewardTrainer` reads, with the value a plain `TrainingArguments` gets."""

_UPSTREAM_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}
"""transformers >= 5.24 names gradient checkpointing `activation_checkpointing`; 5.17 only `gradient_checkpointing`."""


@dataclass
class BradleyTerryRewardConfig(RewardConfig):
    """`trl.RewardConfig` with the batch layout of `BradleyTerryRewardTrainer` (see `bt_peft.training.packing`).

    Attributes:
        packing (`bool`): shared-prefix packing: a pair is one sequence `prompt | chosen reply | rejected reply`
            whose rejected reply sees the prompt but not the chosen reply, so the prompt is computed once.
            Default on.
        padding_free (`bool`): several pairs share one row (block-diagonal attention) up to
            `max_tokens_per_row`, instead of padding every row to the longest. Default on.
        max_tokens_per_row (`int`, *optional*): token budget of a padding-free row; default (None): the longest
            pair of the batch, so rows are never longer than without padding-free batches, only fewer. A pair
            longer than the budget gets a row of its own.

    `activation_checkpointing` is on by default, as TRL's `gradient_checkpointing`, whose name transformers 5.24 has
    deprecated (removed in 6; set it and it still counts, with transformers' `FutureWarning`). On a transformers
    that only knows `gradient_checkpointing` (5.17), `activation_checkpointing` is passed on to it.

    `save_only_model` keeps its meaning (checkpoints without the optimizer, scheduler and RNG state, which cannot be
    resumed); the trainer's `train` runs the Trainer itself with `save_only_model=True` and writes that state as
    safetensors and JSON (`training.checkpointing`). `remove_unused_columns` is set to False by the trainer.

    Rows vary with the data; `per_device_train_batch_size` stays the number of pairs per step. Models whose
    architecture cannot take the custom mask (encoders such as BERT, FlashAttention) fall back to standard padded
    batches, logged once. A plain `RewardConfig` given to the trainer gets these defaults.
    """

    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "deprecated by transformers 5 (removed in 6): use activation_checkpointing"}
    )
    activation_checkpointing: bool | None = field(
        default=None, metadata={"help": "recompute activations in the backward to save memory (default on, as TRL)"}
    )
    packing: bool = field(default=True, metadata={"help": "shared-prefix packing: the prompt of a pair is computed once"})
    padding_free: bool = field(default=True, metadata={"help": "pack several pairs per row up to max_tokens_per_row"})
    max_tokens_per_row: int | None = field(
        default=None, metadata={"help": "token budget of a padding-free row (default: the longest pair of the batch)"}
    )
    append_eos: bool = field(
        default=False,
        metadata={"help": "end every sequence with the eos token and read the reward there (OpenRLHF's PPO scores "
                          "generations ending in eos); recorded in the saved tokenizer. Off: TRL GRPO/RLOO's form"},
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default, under the name transformers 5 keeps
        if not _UPSTREAM_ACTIVATION_CHECKPOINTING and self.gradient_checkpointing is None:
            self.gradient_checkpointing = self.activation_checkpointing
        super().__post_init__()
        if self.max_tokens_per_row is not None and self.max_tokens_per_row < 2:
            raise ValueError(f"max_tokens_per_row must be at least 2 (one token per reply), got {self.max_tokens_per_row}")


def packing_options(args: TrainingArguments) -> tuple[bool, bool, int | None]:
    """(packing, padding_free, max_tokens_per_row) of any `RewardConfig`; a plain one gets the defaults above."""
    names = ("packing", "padding_free", "max_tokens_per_row")
    return tuple(getattr(args, name, getattr(BradleyTerryRewardConfig, name)) for name in names)


def reward_setting(args: TrainingArguments, name: str) -> Any:
    """`args.<name>` for a field of `REWARD_DEFAULTS`; its `RewardConfig` default when `args` has no such field."""
    return getattr(args, name, REWARD_DEFAULTS[name])
