import warnings

import pytest
from trl import RewardConfig

from bt_peft import BradleyTerryRewardConfig
from bt_peft.training.config import packing_options


def test_packing_switches_with_defaults_for_a_plain_reward_config(tmp_path):
    assert packing_options(RewardConfig(output_dir=str(tmp_path), bf16=False)) == (True, True, None)
    args = BradleyTerryRewardConfig(output_dir=str(tmp_path), bf16=False, packing=False, max_tokens_per_row=64)
    assert isinstance(args, RewardConfig) and packing_options(args) == (False, True, 64)


def test_a_row_budget_below_one_pair_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_tokens_per_row must be at least 2"):
        BradleyTerryRewardConfig(output_dir=str(tmp_path), bf16=False, max_tokens_per_row=1)


def checkpointing_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)]


def test_activation_checkpointing_is_on_by_default_without_the_deprecated_name(tmp_path):
    """TRL's default (`gradient_checkpointing=True`) under the name transformers 5 keeps: no FutureWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = BradleyTerryRewardConfig(output_dir=str(tmp_path), bf16=False)
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert checkpointing_warnings(caught) == []


@pytest.mark.parametrize("name", ["activation_checkpointing", "gradient_checkpointing"])
def test_checkpointing_off_is_honoured_under_either_name(tmp_path, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = BradleyTerryRewardConfig(output_dir=str(tmp_path), bf16=False, **{name: False})
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False
    assert bool(checkpointing_warnings(caught)) == (name == "gradient_checkpointing")  # transformers' deprecation
