"""Tokenizer set-up: a pad token distinct from eos, so training and serving read the same token, the record of
the training settings that scoring repeats (`append_eos`, `max_length`, the compute dtype), saved with the tokenizer,
and how the chat template closes a turn (`turn_ending`)."""

import json
import logging
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    import torch
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",  # Llama-3.1 / 3.2 / 3.3
    "<|reserved_special_token_0|>",  # Llama-3 (3.0)
    "<|endoftext|>",  # SmolLM2 (its eos is <|im_end|>), Qwen2.5-Instruct
    "<|vision_pad|>",  # Qwen2.5 base: its pad and eos are both <|endoftext|>; a text model never reads this one
    "<pad>",
    "[PAD]",
    "<unk>",
)
"""Existing, unused special tokens tried in order as the pad token. A new token is never added: it would
resize the embeddings and change the checkpoint."""


def choose_pad_token(tokenizer: PreTrainedTokenizerBase, eos_ids: set[int] | None = None) -> str:
    """Pick the pad token of a reward model.

    Transformers' sequence-classification pooling reads the rightmost token that is not the pad token. With
    pad == eos, a text that ends in eos is scored at the token before it; with a pad token that never occurs in
    text, the reward is read at the true last token under left and right padding alike.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer.
        eos_ids (`set[int]`, *optional*): every id the model treats as eos (configs may list several); the
            tokenizer's own eos is always excluded too.

    Returns:
        `str`: the tokenizer's pad token when it is set and not an eos, otherwise the first existing special
        token of `PAD_CANDIDATES` that is not an eos or bos, otherwise (with a warning) the eos token.
    """
    excluded = set(eos_ids or ()) | {tokenizer.eos_token_id, tokenizer.bos_token_id}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in excluded:
        return tokenizer.pad_token
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    special |= set(tokenizer.all_special_tokens)
    for candidate in PAD_CANDIDATES:
        if candidate in special and tokenizer.convert_tokens_to_ids(candidate) not in excluded:
            return candidate
    logger.warning(
        "No unused special token to pad with: padding with eos %r. A text ending in eos is then scored at the "
        "token before it, by bt-peft and by transformers alike.",
        tokenizer.eos_token,
    )
    return tokenizer.eos_token


def load_tokenizer(
    model_name_or_path: str | os.PathLike, eos_ids: set[int] | None = None, **kwargs
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and give it the pad token of `choose_pad_token`.

    Args:
        model_name_or_path (`str`): Hub id or local directory.
        eos_ids (`set[int]`, *optional*): the model config's eos ids, excluded from padding.
        **kwargs: passed on to `AutoTokenizer.from_pretrained`.

    Returns:
        `PreTrainedTokenizerBase` with `pad_token` set; `bind_pad(model, tokenizer)` gives the model its id.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    tokenizer.pad_token = choose_pad_token(tokenizer, eos_ids)
    return tokenizer


def bind_pad(model_or_config: PreTrainedModel | PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write the tokenizer's pad id onto a model's config (or onto a config), in place.

    Transformers' sequence-classification pooling reads the reward at the rightmost token that is not
    `config.pad_token_id`, so it must be the id the batches are padded with: the tokenizer's (`choose_pad_token`).
    Every model and checkpoint bt-peft loads, trains, merges or exports gets its pad id here.

    Args:
        model_or_config (`PreTrainedModel | PretrainedConfig`): a model (a `PeftModel` too: its `config` is the
            base model's) or a config.
        tokenizer (`PreTrainedTokenizerBase`): the tokenizer that pads its batches.
    """
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    config.pad_token_id = tokenizer.pad_token_id


APPEND_EOS_KEY = "bt_peft_append_eos"
"""Key of the tokenizer's `init_kwargs`, saved in `tokenizer_config.json` with the tokenizer of every checkpoint
(adapter, merge, export): true when the reward model was trained with an eos ending every sequence
(`BradleyTerryRewardConfig.append_eos`). `bt_peft.data.encode` reads it, so scoring, evaluation and serving end each
text with the eos as training did."""


def appends_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `encode` ends every sequence with the eos token for this tokenizer (`APPEND_EOS_KEY`)."""
    return bool(tokenizer.init_kwargs.get(APPEND_EOS_KEY, False))


def saved_tokenizer_settings(directory: str | os.PathLike) -> dict:
    """The `tokenizer_config.json` saved in `directory` as a dict (empty when there is none), read without loading
    the tokenizer."""
    path = Path(directory) / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def saved_appends_eos(directory: str | os.PathLike) -> bool:
    """`appends_eos` of the tokenizer saved in `directory` (False when it holds no `tokenizer_config.json`)."""
    return bool(saved_tokenizer_settings(directory).get(APPEND_EOS_KEY, False))


def set_append_eos(tokenizer: PreTrainedTokenizerBase, append_eos: bool) -> None:
    """Record on the tokenizer (in place, saved with it) whether every sequence ends with its eos token.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer, its pad token already chosen.
        append_eos (`bool`): the training setting (`BradleyTerryRewardConfig.append_eos`).

    Raises:
        ValueError: when `append_eos` is set and the tokenizer has no eos token, or pads with it (the reward is read
            at the last token that is not padding: it would skip the eos); or when the tokenizer already records
            `append_eos` (it was saved with a model trained so) and `append_eos` is False.
    """
    if appends_eos(tokenizer) and not append_eos:
        raise ValueError(
            f"the tokenizer records {APPEND_EOS_KEY}: true (tokenizer_config.json of a model trained with "
            "append_eos): pass append_eos=True to keep training it the same way, or use the base model's tokenizer"
        )
    if not append_eos:
        return
    if tokenizer.eos_token_id is None:
        raise ValueError(f"append_eos: the tokenizer ({type(tokenizer).__name__}) has no eos token to append")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"append_eos: the tokenizer pads with its eos token {tokenizer.eos_token!r}, so the reward would be read "
            "at the token before the eos; give it a pad token that is not an eos"
        )
    tokenizer.init_kwargs[APPEND_EOS_KEY] = True


MAX_LENGTH_KEY = "bt_peft_max_length"
"""Key of the tokenizer's `init_kwargs` (saved like `APPEND_EOS_KEY`): the `max_length` the reward model was trained
with (absent: no limit). `score`, `evaluate_pairs`, `bt-peft eval`/`score`/`export --normalize_on` cut longer texts
from the left to it by default, and `bt-peft serve` takes it as its default `--max_length`."""

COMPUTE_DTYPE_KEY = "bt_peft_compute_dtype"
"""Key of the tokenizer's `init_kwargs` (saved like `APPEND_EOS_KEY`): the dtype the reward model computed in when
trained (its embeddings' dtype: the 4-bit compute dtype under QLoRA), e.g. `"bfloat16"`. `load_for_scoring` loads an
adapter directory's base in 4-bit with it by default."""


def record_training_settings(tokenizer: PreTrainedTokenizerBase, append_eos: bool, max_length: int | None,
                             model: "torch.nn.Module") -> None:
    """Record on the tokenizer (in place, saved with it) the training settings that scoring must repeat.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer, its pad token already chosen.
        append_eos (`bool`): whether every sequence ends with the eos (see `set_append_eos`, which may raise).
        max_length (`int`, *optional*): the most tokens per sequence in training (`MAX_LENGTH_KEY`; None removes the
            record).
        model (`torch.nn.Module`): the model being trained; the dtype of its input embeddings is recorded as the
            compute dtype (`COMPUTE_DTYPE_KEY`).
    """
    set_append_eos(tokenizer, append_eos)
    if max_length is None:
        tokenizer.init_kwargs.pop(MAX_LENGTH_KEY, None)
    else:
        tokenizer.init_kwargs[MAX_LENGTH_KEY] = int(max_length)
    tokenizer.init_kwargs[COMPUTE_DTYPE_KEY] = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")


def trained_max_length(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The `max_length` the reward model was trained with (`MAX_LENGTH_KEY`), or None when none is recorded."""
    value = tokenizer.init_kwargs.get(MAX_LENGTH_KEY)
    return None if value is None else int(value)


def eos_ids_of(config) -> set[int]:
    """Every eos id a model config names (an int or a list)."""
    eos = config.get_text_config().eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


TURN_PROBE = "bt-peft-turn-end-probe"
"""The content of the assistant message rendered by `turn_ending` (found again in the rendering)."""

_turn_endings: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[str | None, tuple[str, str] | None]]" = (
    weakref.WeakKeyDictionary()
)


def turn_ending(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """How the tokenizer's chat template closes an assistant turn: its end-of-turn token and what follows it.

    Renders `[user, assistant]` with the chat template and reads what follows the assistant's content: a special token
    (the end-of-turn token a chat model's generation stops at, e.g. SmolLM2's and Qwen2.5's `<|im_end|>`, Llama-3's
    `<|eot_id|>`), then the rest of the rendering (`"\\n"` for ChatML, `""` for Llama-3). Cached per tokenizer and
    chat template.

    Returns:
        `(end_of_turn_token, suffix)`, or None when the tokenizer has no chat template, the template does not render
        such a conversation, or no special token follows the assistant's content.
    """
    template = tokenizer.chat_template
    cached = _turn_endings.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    ending = None
    if isinstance(template, str):
        conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": TURN_PROBE}]
        try:
            rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
        except (jinja2.TemplateError, ValueError, TypeError) as error:  # a template that refuses this conversation
            logger.debug("chat template does not render %s: %s", conversation, error)
            rendered = ""
        _, found, rest = rendered.rpartition(TURN_PROBE)
        special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        special |= set(tokenizer.all_special_tokens)
        tokens = sorted((token for token in special if found and rest.startswith(token)), key=len, reverse=True)
        if tokens:
            ending = (tokens[0], rest[len(tokens[0]):])
    _turn_endings[tokenizer] = (template, ending)
    return ending


def complete_turn(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """A text that stops at the chat template's end-of-turn token (a chat model's finished generation) completed the
    way the template closes the turn (`turn_ending`), e.g. `...<|im_end|>` -> `...<|im_end|>\\n`: the reward of a
    model trained on rendered conversations is read at the token where training read it. Other texts are returned
    unchanged."""
    ending = turn_ending(tokenizer)
    if ending is None or not ending[1] or not text.endswith(ending[0]):
        return text
    return text + ending[1]
