"""The Bradley-Terry loss on a pair of rewards."""

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Mean negative log-likelihood that the chosen reply beats the rejected one.

    Args:
        chosen_rewards (`torch.Tensor`, shape `(batch,)`): `bt_reward` of the chosen sequences.
        rejected_rewards (`torch.Tensor`, shape `(batch,)`): `bt_reward` of the rejected sequences.
        margin (`torch.Tensor`, shape `(batch,)`, *optional*): required reward gap per pair.
        center_rewards_coefficient (`float`, *optional*): weight of `mean((r_c + r_r) ** 2)`, which pulls
            rewards towards zero mean (Eisenstein et al. 2023, as in TRL).

    Returns:
        `torch.Tensor`, scalar: `mean(-logsigmoid(r_c - r_r - margin))` plus the centring term when set.
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss
