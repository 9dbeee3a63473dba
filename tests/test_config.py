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
