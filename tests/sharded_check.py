"""What the sharding checks run under `torchrun` share (`fsdp_shard_check.py`, `zero3_check.py`): the texts, the
unsharded reference of one forward/backward/SGD step, and the report written by process 0."""

import json

import torch
import torch.distributed as dist

from bt_peft import bt_reward

TEXTS = ["Human: can you help me? Assistant: Sure, I am happy to help.", "Human: hi Assistant: No. Go away."]


def unsharded_reference(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The rewards of `batch` and, per trainable weight, its value after one SGD step of learning rate 1 on the sum
    of the rewards (the weight minus its gradient); the gradients are cleared afterwards."""
    rewards = bt_reward(model(**batch).logits)
    rewards.sum().backward()
    expected = {name: (p - p.grad).detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return rewards.detach(), expected


def finish(report: dict, report_path: str) -> None:
    """Process 0 writes `report` as JSON to `report_path`; every process leaves the process group."""
    if dist.get_rank() == 0:
        with open(report_path, "w") as f:
            json.dump(report, f, indent=2)
    dist.destroy_process_group()
