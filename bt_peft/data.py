"""Preference datasets -> tokenized (chosen_ids, rejected_ids) pairs for the Bradley-Terry reward trainer.

Supported rows follow TRL's preference formats (https://huggingface.co/docs/trl/dataset_formats): standard or
conversational, with an explicit or implicit prompt, raw Anthropic HH-RLHF text, or already tokenized pairs.
Long pairs are cut from the left (the prompt goes first) instead of being dropped, so the end of each response,
where the reward is read, always survives.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
IDENTICAL = "identical after truncation"

Content = str | list[dict]
"""A text, or a conversation: a list of {"role", "content"} messages."""


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split a raw Anthropic HH-RLHF pair into its shared prompt and the two final replies.

    Args:
        chosen (`str`): preferred dialogue, "\\n\\nHuman: ...\\n\\nAssistant: ..." turns.
        rejected (`str`): dispreferred dialogue, sharing every turn with `chosen` but the last reply.

    Returns:
        `tuple[str, str, str]`: (prompt, chosen_reply, rejected_reply), with `prompt + chosen_reply == chosen` and
        `prompt + rejected_reply == rejected`. The prompt ends right after the last "\\n\\nAssistant:" marker both
        texts share; the replies keep their leading space.

    Raises:
        ValueError: if the texts share no "\\n\\nAssistant:" turn.
    """
    shared = chosen[: len(os.path.commonprefix([chosen, rejected]))]
    end = shared.rfind(HH_ASSISTANT)
    if end < 0:
        problem = "has no" if HH_ASSISTANT not in chosen or HH_ASSISTANT not in rejected else "share no"
        raise ValueError(f"HH-RLHF pair {problem} {HH_ASSISTANT!r} turn: cannot tell the prompt from the replies")
    end += len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _form(value) -> str | None:
    """The supported form of a prompt/chosen/rejected value, or None."""
    if isinstance(value, str):
        return "a string"
    return "a list of {role, content} messages" if _is_messages(value) else None


def to_prompt_and_responses(example: dict) -> tuple[Content | None, Content, Content]:
    """Normalize one preference row of any supported format.

    Args:
        example (`dict`): one row with "chosen" and "rejected", and optionally "prompt" (absent or None for an
            implicit prompt). All three are strings (standard format) or lists of {"role", "content"} messages
            (conversational format). Raw HH-RLHF text (both starting with "\\n\\nHuman:", no prompt) is split.

    Returns:
        `tuple`: (prompt, chosen, rejected). `prompt` is None when the row has no separable prompt; otherwise the
        full sequence is `prompt + chosen` (string or list concatenation).

    Raises:
        ValueError: naming the offending column and the expected form.
    """
    chosen, rejected, prompt = example.get("chosen"), example.get("rejected"), example.get("prompt")
    form = _form(chosen)
    if form is None:
        expected = "a string or a list of {role, content} messages"
        raise ValueError(f"column 'chosen' must be {expected}, got {type(chosen).__name__}")
    for column, value in (("rejected", rejected), ("prompt", prompt)):
        if (column == "rejected" or value is not None) and _form(value) != form:
            raise ValueError(f"column {column!r} must be {form} like 'chosen', got {type(value).__name__}")
    if prompt is None and isinstance(chosen, str) and chosen.startswith(HH_HUMAN) and rejected.startswith(HH_HUMAN):
        return split_hh_dialogue(chosen, rejected)
    return prompt, chosen, rejected


def encode(tokenizer, content: Content) -> list[int]:
    """The one tokenization used for training and scoring.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer (needs a chat template for messages).
        content (`str | list[dict]`): a text, or a list of {"role", "content"} messages.

    Returns:
        `list[int]`: token ids. A text gets the tokenizer's own special tokens (e.g. a leading BOS) and nothing
        appended (no EOS). Messages are rendered with the chat template, whose text carries its own special tokens,
        and tokenized without adding any.
    """
    if isinstance(content, str):
        return tokenizer(content)["input_ids"]
    rendered = tokenizer.apply_chat_template(content, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def truncate_left(ids: list[int], max_length: int, keep_prefix: int) -> list[int]:
    """Cut a sequence to `max_length` ids from the left, keeping its leading special tokens.

    Args:
        ids (`list[int]`): token ids of a full sequence (prompt then response).
        max_length (`int`): maximum number of ids to return, larger than `keep_prefix`.
        keep_prefix (`int`): number of leading ids (e.g. BOS) that are always kept.

    Returns:
        `list[int]`: `ids` if short enough, else its first `keep_prefix` ids followed by the last
        `max_length - keep_prefix` ids: the prompt is cut, the response's end (where the reward is read) is kept.
    """
    if len(ids) <= max_length:
        return ids
    if max_length <= keep_prefix:
        raise ValueError(f"max_length ({max_length}) must exceed the {keep_prefix} kept leading special tokens")
    return ids[:keep_prefix] + ids[len(ids) - (max_length - keep_prefix) :]


def fit_to_length(ids: list[int], max_length: int | None, special_prefix: list[int]) -> list[int]:
    """`truncate_left` keeping the leading ids that `ids` shares with `special_prefix` (`encode(tokenizer, "")`:
    the BOS, if any). `max_length=None` returns `ids` unchanged."""
    if max_length is None:
        return ids
    return truncate_left(ids, max_length, _common_prefix_length(ids, special_prefix))


@dataclass
class PreparationReport:
    """What `prepare_preference_dataset` did to one dataset.

    Attributes:
        name (`str`): dataset name ("train", "eval", ...).
        total (`int`): number of input pairs.
        kept (`int`): number of output pairs.
        truncated (`int`): pairs with at least one side cut from the left (the prompt is cut first).
        response_cut (`int`): among those, pairs where response tokens were cut too.
        skipped (`dict[str, int]`): reason -> number of pairs left out.
    """

    name: str
    total: int
    kept: int
    truncated: int
    response_cut: int
    skipped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        return (
            f"{self.name}: {self.total} pairs, {self.kept} kept, {self.truncated} truncated (prompt cut from the "
            f"left), {self.response_cut} with the response cut too, skipped: {skipped}"
        )


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _token_ids(example: dict, column: str) -> list[int]:
    ids = example[column]
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"column {column!r} must be a list of token ids (int), got {type(ids).__name__}")
    return ids


def prepare_preference_dataset(
    dataset: datasets.Dataset, tokenizer, max_length: int | None, name: str = "train"
) -> tuple[datasets.Dataset, PreparationReport]:
    """Tokenize and left-truncate a preference dataset for the reward trainer.

    Args:
        dataset (`datasets.Dataset`): rows in any format `to_prompt_and_responses` accepts, or already tokenized rows
            (columns "chosen_ids" and "rejected_ids"), optionally with a "margin" column.
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer, used through `encode`.
        max_length (`int | None`): maximum ids per sequence; longer ones are cut with `truncate_left` (never dropped),
            keeping the leading ids they share with `encode(tokenizer, "")` (the BOS, if any). None: no limit.
        name (`str`): dataset name used in the report and in error messages.

    Returns:
        `tuple[datasets.Dataset, PreparationReport]`: a dataset with columns "chosen_ids", "rejected_ids"
        (`list[int]`) and "margin" (`float`, only when the input has one), and what was done. Pairs identical after
        truncation are skipped. A response counts as cut when more ids were removed than the prompt had: the
        prompt is `encode(prompt)` when the row has one, else the ids both sides share (an upper bound).

    Raises:
        ValueError: on missing columns, or a malformed row ("<name> row <i>: column ... must be ..., got ...").
    """
    columns = set(dataset.column_names)
    tokenized = {"chosen_ids", "rejected_ids"} <= columns
    if not tokenized and not {"chosen", "rejected"} <= columns:
        raise ValueError(
            f"{name}: expected columns 'chosen' and 'rejected' (optionally 'prompt') or 'chosen_ids' and "
            f"'rejected_ids', got {sorted(columns)}"
        )
    special_prefix = encode(tokenizer, "")
    out = {"chosen_ids": [], "rejected_ids": []} | ({"margin": []} if "margin" in columns else {})
    truncated = response_cut = 0
    skipped = Counter()
    for i, example in enumerate(dataset):
        try:
            if tokenized:
                prompt, chosen, rejected = None, _token_ids(example, "chosen_ids"), _token_ids(example, "rejected_ids")
            else:
                prompt, chosen, rejected = to_prompt_and_responses(example)
                if prompt is not None:
                    chosen, rejected = prompt + chosen, prompt + rejected
                chosen, rejected = encode(tokenizer, chosen), encode(tokenizer, rejected)
            if "margin" in out and not isinstance(example["margin"], (int, float)):
                raise ValueError(f"column 'margin' must be a number, got {type(example['margin']).__name__}")
        except ValueError as error:
            raise ValueError(f"{name} row {i}: {error}") from None
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            n_prompt = len(encode(tokenizer, prompt)) if prompt is not None else _common_prefix_length(chosen, rejected)
            truncated += 1
            if max(len(chosen), len(rejected)) - max_length > n_prompt - _common_prefix_length(chosen, special_prefix):
                response_cut += 1
            chosen = fit_to_length(chosen, max_length, special_prefix)
            rejected = fit_to_length(rejected, max_length, special_prefix)
        if chosen == rejected:
            skipped[IDENTICAL] += 1
            continue
        out["chosen_ids"].append(chosen)
        out["rejected_ids"].append(rejected)
        if "margin" in out:
            out["margin"].append(float(example["margin"]))
    ids = datasets.List(datasets.Value("int64"))
    features = {"chosen_ids": ids, "rejected_ids": ids, "margin": datasets.Value("float64")}
    features = datasets.Features({column: features[column] for column in out})
    report = PreparationReport(name, len(dataset), len(out["chosen_ids"]), truncated, response_cut, dict(skipped))
    return datasets.Dataset.from_dict(out, features=features), report


def load_preference_file(path: str | Path) -> datasets.Dataset:
    """Read a local preference file.

    Args:
        path (`str | Path`): a .jsonl file (one JSON object per line, blank lines ignored) or a .json file (a list
            of objects).

    Returns:
        `datasets.Dataset`: one row per object.

    Raises:
        ValueError: on an unsupported extension, invalid JSON (naming the file and line) or a row that is no object.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}, expected .jsonl or .json")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = _parse_json(text, path, first_line=1)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError(f"{path}: expected a JSON list of objects")
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append(_parse_json(line, path, n))
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"{path} line {n}: expected a JSON object, got {type(rows[-1]).__name__}")
    return datasets.Dataset.from_list(rows)


def _parse_json(text: str, path: Path, first_line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {first_line + error.lineno - 1}: invalid JSON ({error.msg})") from None
