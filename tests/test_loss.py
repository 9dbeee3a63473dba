import math

import torch

from bt_peft import bradley_terry_loss


def nll(difference: float) -> float:
    return -math.log(1 / (1 + math.exp(-difference)))


def test_loss_is_mean_negative_log_sigmoid_of_difference():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (nll(1.0) + nll(-2.0)) / 2
    assert math.isclose(bradley_terry_loss(chosen, rejected).item(), expected, rel_tol=1e-6)


def test_margin_is_subtracted_from_the_difference():
    chosen, rejected, margin = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([0.5, 1.0])
    expected = (nll(0.5) + nll(-3.0)) / 2
    assert math.isclose(bradley_terry_loss(chosen, rejected, margin).item(), expected, rel_tol=1e-6)


def test_centering_term_adds_mean_squared_sum():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (nll(1.0) + nll(-2.0)) / 2 + 0.01 * (1.0**2 + 2.0**2) / 2
    assert math.isclose(bradley_terry_loss(chosen, rejected, None, 0.01).item(), expected, rel_tol=1e-6)
