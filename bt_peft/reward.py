"""The one definition of a sequence's reward under the 2-label Bradley-Terry head."""

import torch

REWARD_LABEL = 1
"""Index of the logit that is the reward (ContextualAI HALOs' convention: `logits[:, 1]`)."""


def bt_reward(logits: torch.Tensor) -> torch.Tensor:
    """Reward of each sequence from the pooled logits of a 2-label sequence-classification head.

    Args:
        logits (`torch.Tensor`, shape `(..., 2)`): pooled classification logits.

    Returns:
        `torch.Tensor`, shape `(...)`: `logits[..., 1]`, the reward. Logit 0 is unused, so checkpoints
        interchange with HALOs consumers that read `logits[:, 1]`.
    """
    if logits.shape[-1] != 2:
        raise ValueError(f"bt_reward expects a 2-label head (last dimension 2), got logits of shape {tuple(logits.shape)}")
    return logits[..., REWARD_LABEL]
