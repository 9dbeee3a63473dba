"""Rewards of token ids (`score_ids`) and of texts or conversations (`score`), read exactly as in training."""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..data import Content, encode, fit_to_length
from ..quantization import disable_cpu_weight_repacking
from ..reward import bt_reward
from ..tokenizer import trained_max_length


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its first parameter that has data (the embeddings), or the CPU when
    every parameter is streamed from disk by accelerate (its hooks then move the inputs wherever each layer runs)."""
    return next((param.device for param in model.parameters() if param.device.type != "meta"), torch.device("cpu"))


@torch.no_grad()
def score_ids(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[list[int]],
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """The one batched scoring loop: rewards of tokenized sequences.

    Args:
        model: a 2-label reward model in memory: 4-bit + adapter (`PeftModel`), merged, or plain.
        tokenizer (`PreTrainedTokenizerBase`): pads the batches; its pad id must be `model.config.pad_token_id`.
        ids (`Sequence[list[int]]`): token ids of each sequence, as `bt_peft.data.encode` makes them.
        batch_size (`int`): sequences per forward; sequences are sorted by length to waste little padding.
        progress (`bool`): show a tqdm progress bar over the batches.

    Returns:
        `torch.Tensor`, float32, shape `(len(ids),)`, on the CPU, in input order: `bt_reward` of each sequence,
        computed in eval mode under `torch.no_grad()` (the model's training mode is restored afterwards; not
        `inference_mode`, whose tensors an FSDP-sharded model could not update in place when training goes on), and
        with `use_cache=False`: a reward needs no KV cache (Llama-3-8B's would take 128 KiB per token in bf16).
    """
    if model.config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"model.config.pad_token_id ({model.config.pad_token_id}) differs from the tokenizer's pad id "
            f"({tokenizer.pad_token_id}): rewards would be read at the wrong token"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    disable_cpu_weight_repacking(model)
    order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
    device = input_device(model)
    rewards = torch.empty(len(ids), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
            batch = order[start : start + batch_size]
            inputs = tokenizer.pad({"input_ids": [ids[index] for index in batch]}, return_tensors="pt").to(device)
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
            rewards[batch] = bt_reward(logits).float().cpu()
    finally:
        model.train(was_training)
    return rewards


def score(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[Content],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Rewards of texts, with the tokenization (`bt_peft.data.encode`) and reward position of training.

    Args:
        model: a 2-label reward model in memory: 4-bit + adapter (`PeftModel`), merged, or plain.
        tokenizer (`PreTrainedTokenizerBase`): its pad id must be `model.config.pad_token_id`.
        texts: plain texts (prompt + reply) or conversations (lists of `{"role", "content"}` messages).
        batch_size (`int`): sequences per forward; texts are batched by length to waste little padding.
        max_length (`int`, *optional*): texts longer than this are cut from the left, as in training; default: the
            `max_length` the model was trained with, recorded in its tokenizer (`trained_max_length`), else no limit.
        progress (`bool`): show a progress bar over the batches.

    Returns:
        `torch.Tensor`, float32, shape `(len(texts),)`, on the CPU, in input order: `bt_reward` of each text.
    """
    special_prefix = encode(tokenizer, "")
    max_length = max_length or trained_max_length(tokenizer)
    ids = [fit_to_length(encode(tokenizer, text), max_length, special_prefix) for text in texts]
    return score_ids(model, tokenizer, ids, batch_size, progress)
