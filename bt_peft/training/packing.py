"""Shared-prefix packing and padding-free batches for decoder-only reward models.

A pair becomes one sequence `prompt | chosen reply | rejected reply`. The rejected reply attends to the prompt and
(causally) to itself, never to the chosen reply; the position ids of both replies run on from the prompt. So each
reply is computed exactly as in its own padded sequence, but the prompt only once. The rewards are read
(`bt_reward`) at the last token of each reply, from the backbone's final hidden states through the score head.
Padding-free batches put several such pairs in one row (block-diagonal attention, positions restarting per pair).

The prompt is the longest common prefix of the two token sequences, capped so that each reply keeps a token: exact
whatever the data format (truncated pairs whose beginnings differ simply share a shorter prefix).
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_layers import GenericForSequenceClassification

from ..data import common_prefix_length
from ..modeling import head_of
from ..reward import bt_reward

logger = logging.getLogger(__name__)

PROMPT, CHOSEN, REJECTED = 0, 1, 2
"""`part_ids` values: which part of its pair a token is."""
PADDING = -1
"""`pair_ids` of the padding at the end of a row (padding attends only to padding, and is never read)."""


def shared_prefix_length(chosen: list[int], rejected: list[int]) -> int:
    """Length of the prompt that `chosen` and `rejected` share: their longest common prefix, capped at
    `min(len) - 1` so that each reply keeps at least one token (the one its reward is read at)."""
    return min(common_prefix_length(chosen, rejected), len(chosen) - 1, len(rejected) - 1)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bin-pack items into rows: longest first, each into the first row with room.

    Args:
        lengths (`list[int]`): item sizes (tokens per packed pair).
        capacity (`int`): tokens per row; an item longer than that gets a row of its own.

    Returns:
        `list[list[int]]`: item indices of each row.
    """
    rows, room = [], []
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[item] <= free), None)
        if row is None:
            rows.append([item])
            room.append(capacity - lengths[item])
        else:
            rows[row].append(item)
            room[row] -= lengths[item]
    return rows


@dataclass
class PackedPairCollator:
    """Collate preference pairs into packed rows.

    Args:
        pad_token_id (`int`): id filling the end of short rows (never attended to by real tokens, never read).
        shared_prefix (`bool`): compute the shared prompt once (`prompt | chosen | rejected`); False packs the two
            full sequences side by side (padding-free batches only).
        padding_free (`bool`): several pairs per row (first-fit decreasing); False: one pair per row.
        max_tokens_per_row (`int`, *optional*): token budget of a padding-free row; None: the longest pair of the
            batch.

    Call with a list of examples `{"chosen_ids": list[int], "rejected_ids": list[int], "margin": float (optional)}`.
    Returns a dict of tensors, with R rows of T tokens and B pairs:
        `input_ids` (R, T), `position_ids` (R, T): tokens and their positions (each reply runs on from its prompt);
        `pair_ids` (R, T): index of the token's pair within its row, `PADDING` for padding;
        `part_ids` (R, T): `PROMPT`, `CHOSEN` or `REJECTED` (padding: `PROMPT`);
        `chosen_index`, `rejected_index` (B,): flat index (`row * T + column`) of each pair's last chosen/rejected
        token, in example order; `margin` (B,) when the examples have one.
    """

    pad_token_id: int
    shared_prefix: bool = True
    padding_free: bool = True
    max_tokens_per_row: int | None = None

    def _layout(self, example: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        chosen, rejected = list(example["chosen_ids"]), list(example["rejected_ids"])
        if not chosen or not rejected:
            raise ValueError("PackedPairCollator: a pair has an empty chosen_ids or rejected_ids sequence")
        prefix = shared_prefix_length(chosen, rejected) if self.shared_prefix else 0
        ids = chosen + rejected[prefix:]
        positions = list(range(len(chosen))) + list(range(prefix, len(rejected)))
        parts = [PROMPT] * prefix + [CHOSEN] * (len(chosen) - prefix) + [REJECTED] * (len(rejected) - prefix)
        return ids, positions, parts

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        layouts = [self._layout(example) for example in examples]
        lengths = [len(ids) for ids, _, _ in layouts]
        if self.padding_free:
            rows = first_fit_decreasing(lengths, self.max_tokens_per_row or max(lengths))
        else:
            rows = [[pair] for pair in range(len(layouts))]
        width = max(sum(lengths[pair] for pair in row) for row in rows)
        shape = (len(rows), width)
        batch = {  # per-pair tensors first: transformers' `find_batch_size` reads the first one (eval loss weights)
            "chosen_index": torch.empty(len(layouts), dtype=torch.long),
            "rejected_index": torch.empty(len(layouts), dtype=torch.long),
            "input_ids": torch.full(shape, self.pad_token_id, dtype=torch.long),
            "position_ids": torch.zeros(shape, dtype=torch.long),
            "pair_ids": torch.full(shape, PADDING, dtype=torch.long),
            "part_ids": torch.full(shape, PROMPT, dtype=torch.long),
        }
        for r, row in enumerate(rows):
            start = 0
            for slot, pair in enumerate(row):
                ids, positions, parts = layouts[pair]
                end = start + len(ids)
                batch["input_ids"][r, start:end] = torch.tensor(ids)
                batch["position_ids"][r, start:end] = torch.tensor(positions)
                batch["pair_ids"][r, start:end] = slot
                batch["part_ids"][r, start:end] = torch.tensor(parts)
                batch["chosen_index"][pair] = r * width + start + parts.count(PROMPT) + parts.count(CHOSEN) - 1
                batch["rejected_index"][pair] = r * width + end - 1
                start = end
            batch["position_ids"][r, start:] = torch.arange(width - start)
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([example["margin"] for example in examples], dtype=torch.float)
        return batch


def attention_allowed(pair_q, pair_k, part_q, part_k, position_q, position_k, q, k, sliding_window: int | None):
    """The packed attention rule, elementwise on (broadcast) tensors or on FlexAttention's scalar indices:
    the same pair, causal, a reply sees the prompt and itself only, and keys within `sliding_window` positions."""
    allowed = (pair_q == pair_k) & (k <= q) & ((part_k == PROMPT) | (part_k == part_q))
    if sliding_window is not None:
        allowed = allowed & (position_q - position_k < sliding_window)
    return allowed


def sliding_window_of(config) -> int | None:
    """The attention window of a model whose layers all attend alike (None: full attention)."""
    kinds = set(getattr(config, "layer_types", None) or [])
    if kinds == {"full_attention"}:
        return None
    return getattr(config, "sliding_window", None)


def packing_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `packed_logits` cannot run `model` (a reward model, optionally PEFT-wrapped), or None when it can.

    Supported: transformers' decoder-only sequence classifiers (`GenericForSequenceClassification`: Llama, Mistral,
    Qwen2/3, Gemma, Phi-3, ...) with SDPA, eager or FlexAttention and one kind of attention layer.
    """
    base = unwrap_reward_model(model)
    name = type(base).__name__
    if not isinstance(base, GenericForSequenceClassification):
        return f"{name} is not a decoder-only classifier reading the last token (encoders pool their own way)"
    config = base.config.get_text_config()
    attention = base.config._attn_implementation
    if attention not in MASK_BUILDERS:
        supported = ", ".join(MASK_BUILDERS)
        return f"{name} uses attn_implementation={attention!r}, which takes no custom mask (packing needs {supported})"
    if not getattr(config, "is_causal", True):
        return f"{name} attends bidirectionally"
    kinds = set(getattr(config, "layer_types", None) or [])
    if len(kinds) > 1 or kinds - {"full_attention", "sliding_attention"}:
        return f"{name} mixes attention layer types {sorted(kinds)}, which would need one mask per type"
    return None


def _dense_mask(batch: dict[str, torch.Tensor], sliding_window: int | None) -> torch.Tensor:
    pair, part, position = batch["pair_ids"], batch["part_ids"], batch["position_ids"]
    index = torch.arange(pair.shape[1], device=pair.device)
    allowed = attention_allowed(
        pair[:, :, None], pair[:, None, :], part[:, :, None], part[:, None, :],
        position[:, :, None], position[:, None, :], index[:, None], index[None, :], sliding_window,
    )
    return allowed[:, None]  # (R, 1, T, T), True: attend


def _sdpa_mask(batch: dict[str, torch.Tensor], sliding_window: int | None, dtype: torch.dtype):
    return _dense_mask(batch, sliding_window)


def _eager_mask(batch: dict[str, torch.Tensor], sliding_window: int | None, dtype: torch.dtype):
    allowed = _dense_mask(batch, sliding_window)  # eager attention adds the mask to the scores
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)


def _flex_mask(batch: dict[str, torch.Tensor], sliding_window: int | None, dtype: torch.dtype):
    from torch.nn.attention.flex_attention import create_block_mask

    pair, part, position = batch["pair_ids"], batch["part_ids"], batch["position_ids"]

    def mask_mod(b, h, q, k):
        return attention_allowed(
            pair[b, q], pair[b, k], part[b, q], part[b, k], position[b, q], position[b, k], q, k, sliding_window
        )

    rows, width = pair.shape
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=pair.device)


MASK_BUILDERS = {"sdpa": _sdpa_mask, "eager": _eager_mask, "flex_attention": _flex_mask}
"""attn_implementation -> (packed batch, sliding window, hidden dtype) -> the mask its attention takes."""


def unwrap_reward_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP/FSDP (`.module`) and PEFT (`get_base_model`) wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Head logits at each pair's two reward positions, as the standard forward pools them.

    The packed rows go through the model's own forward (so DDP/FSDP wrappers synchronise gradients as usual) with the
    packed mask and position ids; the head's per-token output is captured with a forward hook and read at the
    reward positions (the model's own last-token pooling of packed rows is ignored).

    Args:
        model: a reward model `packing_unsupported_reason` accepts (e.g. from `load_qlora_model`), possibly wrapped
            by DDP/FSDP.
        batch (`dict[str, Tensor]`): from `PackedPairCollator`, on the model's device.

    Returns:
        `torch.Tensor`, shape (2B, 2): the chosen rows then the rejected rows, in example order (the layout of the
        standard batch, so `bt_reward(...).chunk(2)` gives (chosen, rejected)).
    """
    base = unwrap_reward_model(model)
    builder = MASK_BUILDERS[base.config._attn_implementation]
    mask = builder(batch, sliding_window_of(base.config.get_text_config()), base.get_input_embeddings().weight.dtype)
    captured = []
    hook = getattr(base, head_of(base)).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
    finally:
        hook.remove()
    index = torch.cat([batch["chosen_index"], batch["rejected_index"]])
    return captured[0].flatten(0, 1)[index]


def packed_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards, each of shape (B,): `bt_reward` of `packed_logits`."""
    chosen, rejected = bt_reward(packed_logits(model, batch)).chunk(2)
    return chosen, rejected
