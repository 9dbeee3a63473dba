"""The merge check of the recipe: a merged checkpoint, loaded with plain transformers within a memory budget, scores a
few preference pairs whose rewards the trained model gave beforehand.

The merged model never needs to fit the host RAM: accelerate's big-model loading places its layers on the GPU while
they fit its free memory, then in host RAM up to a budget, and streams the rest from the checkpoint's own safetensors
files one layer at a time during the forward (`device_map="auto"`, `max_memory`, `offload_folder`).
"""

import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..data import Content, to_prompt_and_responses
from .scoring import score

DEFAULT_HOST_SHARE = 0.25
"""The default host-RAM budget of the merged weights: this share of the model's bf16 size (2 GB of Llama-3-8B's
16 GB), so that the check adds well under 0.4x the model's bf16 size to the host RAM that training used."""
GPU_RESERVE = 0.9, 1 << 30
"""Of the GPU's free memory, the merged weights may use this fraction minus this many bytes (the rest is for the
activations of the few scored texts and allocator slack)."""


def pair_texts(pairs: Iterable[dict]) -> list[Content]:
    """The chosen texts of `pairs` (prompt + reply, or the whole conversation), then their rejected texts.

    Args:
        pairs (`Iterable[dict]`): preference rows in any supported format (`data.to_prompt_and_responses`).

    Returns:
        `list`: `2 * n` texts for `n` pairs; text `i` is pair `i`'s chosen one, text `n + i` its rejected one.
    """
    sides = [to_prompt_and_responses(row) for row in pairs]  # (prompt, chosen, rejected)
    return [side[reply] if side[0] is None else side[0] + side[reply] for reply in (1, 2) for side in sides]


def checkpoint_bytes(checkpoint_dir: str | os.PathLike) -> int:
    """The size of the safetensors weights of a checkpoint directory, in bytes."""
    files = list(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no .safetensors weights to check")
    return sum(file.stat().st_size for file in files)


def merged_memory_budget(merged_dir: str | os.PathLike, max_host_bytes: int | None = None) -> dict[int | str, int]:
    """Where the merged checkpoint's weights may go, as accelerate's `max_memory`: this process's GPU up to what its
    free memory allows (`GPU_RESERVE`), when there is one; the host RAM up to `max_host_bytes`; the rest is
    streamed from disk.

    Args:
        merged_dir (`str`): a `merge_and_save` directory.
        max_host_bytes (`int`, *optional*): host-RAM budget of the weights; default `DEFAULT_HOST_SHARE` of the
            model's size in bf16 (from the checkpoint's size and dtype).

    Returns:
        `dict`: `{gpu_index: bytes, "cpu": bytes}` or `{"cpu": bytes}`.
    """
    if max_host_bytes is None:
        dtype = AutoConfig.from_pretrained(merged_dir).dtype
        bytes_per_weight = dtype.itemsize if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype)).itemsize
        max_host_bytes = int(DEFAULT_HOST_SHARE * checkpoint_bytes(merged_dir) * 2 / bytes_per_weight)
    budget: dict[int | str, int] = {"cpu": max_host_bytes}
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        fraction, reserve = GPU_RESERVE
        budget = {torch.cuda.current_device(): max(int(free * fraction) - reserve, 0)} | budget
    return budget


def compare_with_merged(
    merged_dir: str | os.PathLike,
    texts: list[Content],
    trained_rewards: torch.Tensor,
    max_length: int | None = None,
    max_host_bytes: int | None = None,
) -> dict:
    """Score `texts` with a merged checkpoint loaded the plain way (`AutoModelForSequenceClassification` in its saved
    dtype, its saved tokenizer), within `merged_memory_budget`, and compare with the trained model's rewards.

    Args:
        merged_dir (`str`): a `merge_and_save` directory.
        texts (`list`): `pair_texts` of the scored pairs.
        trained_rewards (`torch.Tensor`): `score(trained_model, tokenizer, texts, max_length=max_length)`, computed
            beforehand (in a multi-process run: by every process, as a sharded model's forward needs them all).
        max_length (`int`, *optional*): as in training.
        max_host_bytes (`int`, *optional*): see `merged_memory_budget`.

    Returns:
        `dict`: `merged_vs_trained_max_abs_reward_diff` (the largest difference over all texts), `scored_pairs` (the
        merged checkpoint's `chosen_reward` and `rejected_reward` of each pair) and `merge_check`: `status` "done",
        `memory_budget` (bytes by device) and `placement` (the number of modules on each device, "disk" for those
        streamed from the checkpoint's files).
    """
    if len(texts) != len(trained_rewards) or len(texts) % 2:
        raise ValueError(f"{len(texts)} texts and {len(trained_rewards)} trained rewards: expected as many, two per pair")
    budget = merged_memory_budget(merged_dir, max_host_bytes)
    with tempfile.TemporaryDirectory(prefix=".merge-check-", dir=Path(merged_dir).parent) as offload_dir:
        merged = AutoModelForSequenceClassification.from_pretrained(
            merged_dir, dtype="auto", device_map="auto", max_memory=budget, offload_folder=offload_dir
        )
        merged_rewards = score(merged, AutoTokenizer.from_pretrained(merged_dir), texts, max_length=max_length)
        # transformers sets no `hf_device_map` when the whole model went to one device
        device_map = getattr(merged, "hf_device_map", None) or {"": next(merged.parameters()).device}
        placement = Counter(str(device) for device in device_map.values())
        del merged
    n = len(texts) // 2
    return {
        "merged_vs_trained_max_abs_reward_diff": (merged_rewards - trained_rewards.cpu()).abs().max().item(),
        "scored_pairs": [{"chosen_reward": merged_rewards[i].item(), "rejected_reward": merged_rewards[n + i].item()}
                         for i in range(n)],
        "merge_check": {"status": "done", "memory_budget": {str(key): value for key, value in budget.items()},
                        "placement": dict(placement)},
    }
