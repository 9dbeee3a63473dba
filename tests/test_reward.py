import pytest
import torch

from bt_peft import bt_reward


def test_reward_is_logit_one():
    logits = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    assert torch.equal(bt_reward(logits), torch.tensor([-1.0, 3.0]))


def test_reward_keeps_leading_dimensions():
    logits = torch.arange(12.0).reshape(3, 2, 2)
    assert torch.equal(bt_reward(logits), logits[..., 1])


def test_reward_refuses_other_head_sizes():
    with pytest.raises(ValueError, match="2-label head"):
        bt_reward(torch.zeros(4, 1))
