"""Preference datasets -> tokenized (chosen_ids, rejected_ids) pairs for the Bradley-Terry reward trainer.

Supported rows follow TRL's preference formats (https://huggingface.co/docs/trl/dataset_formats): standard or
conversational, with an explicit or implicit prompt, raw Anthropic HH-RLHF text, or already tokenized pairs.
Long pairs are cut from the left (the prompt goes first) instead of being dropped, so the end of each response,
where the reward is read, always survives.

Bad input: a row or file that is not what it claims to be raises `PreferenceDataError` naming the source (file or
dataset), the row (`line N` of a .jsonl file, counted from 1; `item N` of a .json list or `index N` of a dataset,
counted from 0), the field, what was found and what was expected. Pairs that are well formed but carry no signal
(identical, or an empty text) are skipped and counted in the `PreparationReport`.
"""

import codecs
import json
import math
import reprlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow

from .tokenizer import appends_eos, complete_turn

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
IDENTICAL = "identical after truncation"
EMPTY = "empty text"
ROLES = ("system", "user", "assistant", "tool")
FORMS = {"text": "a string", "messages": "a list of {role, content} messages"}
TEXT_OR_MESSAGES = "a string or a list of {role, content} messages"
OPTIONAL_FIELDS = ("prompt", "margin")
DEMO_DATA = "bt_peft:demo"
"""`dataset_name` of the bundled demo preference set (`bt_peft/demo_data/demo_{train,dev}.jsonl`)."""

Content = str | list[dict]
"""A text, or a conversation: a list of {"role", "content"} messages."""


class PreferenceDataError(ValueError):
    """Preference data bt-peft cannot train on. The message names the source, row, field, what was found and what
    was expected, e.g. `pairs.jsonl line 7: field 'chosen': expected a string or ..., got int 3`."""


def _found(value) -> str:
    """Type and short repr of a bad value, for error messages."""
    return "None" if value is None else f"{type(value).__name__} {reprlib.repr(value)}"


def _field_error(column: str, expected: str, value) -> PreferenceDataError:
    return PreferenceDataError(f"field {column!r}: expected {expected}, got {_found(value)}")


def common_prefix_length(a: str | list, b: str | list) -> int:
    """Length of the common prefix of two strings or lists, by bisection on slice equality (fast on long texts:
    `os.path.commonprefix` compares character by character in Python)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if a[:middle] == b[:middle] else (low, middle - 1)
    return low


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
        PreferenceDataError: if the texts share no "\\n\\nAssistant:" turn.
    """
    shared = chosen[: common_prefix_length(chosen, rejected)]
    end = shared.rfind(HH_ASSISTANT)
    if end < 0:
        problem = "has no" if HH_ASSISTANT not in chosen or HH_ASSISTANT not in rejected else "share no"
        raise PreferenceDataError(
            f"fields 'chosen' and 'rejected': HH-RLHF pair {problem} {HH_ASSISTANT!r} turn, cannot tell the prompt "
            f"from the replies; expected both to share the dialogue up to a final {HH_ASSISTANT!r}"
        )
    end += len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _check_messages(column: str, messages: list) -> None:
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _field_error(f"{column}[{j}]", "a {role, content} message", message)
        if message.get("role") not in ROLES:
            raise _field_error(f"{column}[{j}].role", f"one of {', '.join(ROLES)}", message.get("role"))
        if not isinstance(message.get("content"), str):
            raise _field_error(f"{column}[{j}].content", "a string", message.get("content"))


def content_form(column: str, value) -> str | None:
    """The form of a prompt/chosen/rejected value: "text", "messages" (checked message by message) or None."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        _check_messages(column, value)
        return "messages"
    return None


def to_prompt_and_responses(example: dict) -> tuple[Content | None, Content, Content]:
    """Normalize and check one preference row of any supported format.

    Args:
        example (`dict`): one row with "chosen" and "rejected", and optionally "prompt" (absent for an implicit
            prompt; a row that has the field needs a value). All three are strings (standard format) or lists of
            {"role", "content"} messages with roles in `ROLES` (conversational format). Raw HH-RLHF text (both
            starting with "\\n\\nHuman:", no prompt) is split.

    Returns:
        `tuple`: (prompt, chosen, rejected). `prompt` is None when the row has no separable prompt; otherwise the
        full sequence is `prompt + chosen` (string or list concatenation).

    Raises:
        PreferenceDataError: naming the offending field (message index for conversations), what was found and
            the expected form.
    """
    for column in ("chosen", "rejected"):
        if column not in example:
            raise PreferenceDataError(f"field {column!r} is missing; expected {TEXT_OR_MESSAGES}")
    form = content_form("chosen", example["chosen"])
    if form is None:
        raise _field_error("chosen", TEXT_OR_MESSAGES, example["chosen"])
    for column in ("rejected", "prompt") if "prompt" in example else ("rejected",):
        if content_form(column, example[column]) != form:
            every_row = " (a dataset with a prompt field needs one on every row)" if column == "prompt" else ""
            raise _field_error(column, f"{FORMS[form]} like 'chosen'{every_row}", example[column])
    chosen, rejected, prompt = example["chosen"], example["rejected"], example.get("prompt")
    if prompt is None and form == "text" and chosen.startswith(HH_HUMAN) and rejected.startswith(HH_HUMAN):
        return split_hh_dialogue(chosen, rejected)
    return prompt, chosen, rejected


def _token_ids(example: dict, column: str, vocab_size: int | None = None) -> list[int]:
    ids = example.get(column)
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise _field_error(column, "a list of token ids (int)", ids)
    bad = next((i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)), None)
    if bad is not None:
        raise PreferenceDataError(f"field {column!r}: expected token ids in [0, {vocab_size}), got {bad}")
    return ids


def _check_margin(value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _field_error("margin", "a finite number", value)


def _row_kind(example: dict) -> str:
    """Check a row (no tokenizer needed) and return its format: "token ids", "text" or "messages"."""
    if "chosen_ids" in example or "rejected_ids" in example:
        for column in ("chosen_ids", "rejected_ids"):
            _token_ids(example, column)
        kind = "token ids"
    else:
        kind = "text" if isinstance(to_prompt_and_responses(example)[1], str) else "messages"
    if "margin" in example:
        _check_margin(example["margin"])
    return kind


def _is_empty(content: Content | list[int]) -> bool:
    return not content or (isinstance(content, str) and not content.strip())


def encode(tokenizer, content: Content) -> list[int]:
    """The one tokenization used for training and scoring.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer (needs a chat template for messages).
        content (`str | list[dict]`): a text, or a list of {"role", "content"} messages.

    Returns:
        `list[int]`: token ids. A text gets the tokenizer's own special tokens (e.g. a leading BOS), except a second
        BOS when the text already starts with one (as OpenRLHF sends chat-template text); a text that stops at the chat
        template's end-of-turn token (a finished generation, as OpenRLHF sends it) is completed as the template
        closes a turn (`bt_peft.tokenizer.complete_turn`: `<|im_end|>` -> `<|im_end|>\\n`). Messages are rendered with
        the chat template, whose text carries its own special tokens, and tokenized without adding any. Nothing else is
        appended, unless the tokenizer records `append_eos` (`bt_peft.tokenizer.appends_eos`): then trailing
        newlines are removed and the ids end with one eos token (OpenRLHF's convention: a generation ends at eos).
    """
    text = complete_turn(tokenizer, content) if isinstance(content, str) else tokenizer.apply_chat_template(content, tokenize=False)
    append_eos = appends_eos(tokenizer)
    if append_eos:
        text = text.rstrip("\n")
    ids = tokenizer(text, add_special_tokens=isinstance(content, str))["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos] and text.startswith(tokenizer.bos_token):
        ids = ids[1:]
    if append_eos and ids[-1:] != [tokenizer.eos_token_id]:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def minimal_pair_length(tokenizer) -> int:
    """The smallest usable `max_length`: the tokenizer's own special tokens (`encode(tokenizer, "")`, e.g. BOS),
    plus one prompt token and one response token."""
    return len(encode(tokenizer, "")) + 2


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
    return truncate_left(ids, max_length, common_prefix_length(ids, special_prefix))


def fit_pair_to_length(
    chosen: list[int], rejected: list[int], max_length: int, special_prefix: list[int]
) -> tuple[list[int], list[int]]:
    """Cut a pair to `max_length` ids per side, both sides by the same prompt tokens where possible.

    When the tokens to cut from the longer side lie within the prompt the two sides share, both sides lose exactly
    those tokens: the two replies are judged on the same context, and the pair keeps its shared prefix (which
    shared-prefix packing computes once). Otherwise (a reply itself is too long) each side is cut on its own with
    `fit_to_length`. The leading ids shared with `special_prefix` (the BOS, if any) are always kept.

    Returns:
        `tuple[list[int], list[int]]`: (chosen, rejected), each at most `max_length` ids.
    """
    cut = max(len(chosen), len(rejected)) - max_length
    keep = common_prefix_length(chosen, special_prefix)
    if 0 < cut and keep + cut <= common_prefix_length(chosen, rejected) and keep < max_length:
        return chosen[:keep] + chosen[keep + cut :], rejected[:keep] + rejected[keep + cut :]
    return fit_to_length(chosen, max_length, special_prefix), fit_to_length(rejected, max_length, special_prefix)


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


def prepare_preference_dataset(
    dataset: datasets.Dataset, tokenizer, max_length: int | None, name: str = "train"
) -> tuple[datasets.Dataset, PreparationReport]:
    """Check, tokenize and left-truncate a preference dataset for the reward trainer.

    Args:
        dataset (`datasets.Dataset`): rows in any format `to_prompt_and_responses` accepts, or already tokenized rows
            (columns "chosen_ids" and "rejected_ids"), optionally with a "margin" column.
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer, used through `encode`.
        max_length (`int | None`): maximum ids per sequence; longer pairs are cut from the left with
            `fit_pair_to_length` (never dropped): both sides by the same prompt tokens when the cut lies within their
            shared prompt, keeping the leading ids they share with `encode(tokenizer, "")` (the BOS, if any).
            None: no limit.
        name (`str`): dataset name used in the report and in error messages.

    Returns:
        `tuple[datasets.Dataset, PreparationReport]`: a dataset with columns "chosen_ids", "rejected_ids"
        (`list[int]`) and "margin" (`float`, only when the input has one), and what was done. Skipped and counted:
        pairs identical after truncation, and pairs with an empty (or whitespace-only) chosen or rejected text,
        prompt included. A response counts as cut when more ids were removed than the prompt had: the prompt is
        `encode(prompt)` when the row has one, else the ids both sides share (an upper bound).

    Raises:
        PreferenceDataError: on missing columns, an empty dataset, a malformed row ("<name> index <i>: field ...:
            expected ..., got ..."), token ids outside the vocabulary, or no pair left after skipping.
    """
    columns = set(dataset.column_names)
    tokenized = {"chosen_ids", "rejected_ids"} <= columns
    if not tokenized and not {"chosen", "rejected"} <= columns:
        raise PreferenceDataError(
            f"{name}: expected fields 'chosen' and 'rejected' (optionally 'prompt') or 'chosen_ids' and "
            f"'rejected_ids', got {sorted(columns)}"
        )
    if len(dataset) == 0:
        raise PreferenceDataError(f"{name}: the dataset has no rows; expected at least one preference pair")
    special_prefix = encode(tokenizer, "")
    out = {"chosen_ids": [], "rejected_ids": []} | ({"margin": []} if "margin" in columns else {})
    truncated = response_cut = 0
    skipped = Counter()
    for i, example in enumerate(dataset):
        try:
            if tokenized:
                prompt = None
                chosen, rejected = (_token_ids(example, c, len(tokenizer)) for c in ("chosen_ids", "rejected_ids"))
            else:
                prompt, chosen, rejected = to_prompt_and_responses(example)
                if prompt is not None:
                    chosen, rejected = prompt + chosen, prompt + rejected
            if "margin" in out:
                _check_margin(example["margin"])
        except PreferenceDataError as error:
            raise PreferenceDataError(f"{name} index {i}: {error}") from None
        if _is_empty(chosen) or _is_empty(rejected):
            skipped[EMPTY] += 1
            continue
        if not tokenized:
            chosen, rejected = encode(tokenizer, chosen), encode(tokenizer, rejected)
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            n_prompt = len(encode(tokenizer, prompt)) if prompt is not None else common_prefix_length(chosen, rejected)
            truncated += 1
            if max(len(chosen), len(rejected)) - max_length > n_prompt - common_prefix_length(chosen, special_prefix):
                response_cut += 1
            chosen, rejected = fit_pair_to_length(chosen, rejected, max_length, special_prefix)
        if chosen == rejected:
            skipped[IDENTICAL] += 1
            continue
        out["chosen_ids"].append(chosen)
        out["rejected_ids"].append(rejected)
        if "margin" in out:
            out["margin"].append(float(example["margin"]))
    report = PreparationReport(name, len(dataset), len(out["chosen_ids"]), truncated, response_cut, dict(skipped))
    if report.kept == 0:
        raise PreferenceDataError(f"{name}: no pair left to train on ({report}); expected at least one usable pair")
    ids = datasets.List(datasets.Value("int64"))
    features = {"chosen_ids": ids, "rejected_ids": ids, "margin": datasets.Value("float64")}
    features = datasets.Features({column: features[column] for column in out})
    return datasets.Dataset.from_dict(out, features=features), report


def load_preference_file(path: str | Path) -> datasets.Dataset:
    """Read and check a local preference file.

    Args:
        path (`str | Path`): a UTF-8 .jsonl file (one JSON object per line, blank lines ignored) or .json file (a
            list of objects). Every row must pass `to_prompt_and_responses` (or hold token ids), all rows must share
            one format (text, messages or token ids), and "prompt"/"margin" must be on every row or on none.

    Returns:
        `datasets.Dataset`: one row per object, every field of every row kept (None where a row lacks it).

    Raises:
        PreferenceDataError: naming the file and the row (`line N`, or `item N` of a .json list) on an unsupported
            file type, bytes that are not UTF-8, invalid JSON, a row that is no object or is malformed, mixed
            formats, an optional field on some rows only, a field whose JSON type changes between rows, or no rows.
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise PreferenceDataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; expected .jsonl or .json")
    text = _read_utf8(path)
    if path.suffix == ".json":
        items = _parse_json(text, path, first_line=1)
        if not isinstance(items, list):
            raise PreferenceDataError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
        rows = [(f"{path} item {i}", item) for i, item in enumerate(items)]
    else:  # split on "\n" only: str.splitlines would also break lines at U+2028 inside JSON strings
        lines = enumerate(text.split("\n"), 1)
        rows = [(f"{path} line {n}", _parse_json(line, path, n)) for n, line in lines if line.strip()]
    _check_rows(path, rows)
    return _to_dataset(path, rows)


def load_split(
    dataset_name: str, split: str, limit: int | None = None, *, config: str | None = None, data_dir: str | None = None
) -> datasets.Dataset:
    """One split of a preference data set, cut to its first `limit` rows when set.

    Args:
        dataset_name (`str`): `bt_peft:demo` (the bundled demo set), a local directory holding `<split>.jsonl`
            files (read by `load_preference_file`), or a Hub dataset id.
        split (`str`): e.g. "train", "dev", "test".
        limit (`int`, *optional*): keep the first `limit` rows.
        config, data_dir (`str`, *optional*): name and `data_dir` of a Hub dataset (e.g. `harmless-base`).

    Returns:
        `datasets.Dataset`.
    """
    if dataset_name == DEMO_DATA:
        dataset = load_preference_file(Path(__file__).parent / "demo_data" / f"demo_{split}.jsonl")
    elif Path(dataset_name).is_dir():
        dataset = load_preference_file(Path(dataset_name) / f"{split}.jsonl")
    else:
        dataset = datasets.load_dataset(dataset_name, config, data_dir=data_dir, split=split)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def _read_utf8(path: Path) -> str:
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PreferenceDataError(
            f"{path} line {line}: byte {data[error.start]:#04x} at offset {error.start} is not UTF-8; expected a "
            "UTF-8 file (re-encode it, e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _parse_json(text: str, path: Path, first_line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PreferenceDataError(f"{path} line {first_line + error.lineno - 1}: invalid JSON ({error.msg})") from None


def _check_rows(path: Path, rows: list[tuple[str, object]]) -> None:
    """Every row well formed, one format per file, optional fields on every row or none (`from_list` would keep
    only the first row's fields)."""
    if not rows:
        raise PreferenceDataError(f"{path}: no rows; expected at least one preference pair")
    first_where, first = rows[0]
    first_kind = None
    for where, row in rows:
        if not isinstance(row, dict):
            raise PreferenceDataError(f"{where}: expected a JSON object, got {_found(row)}")
        try:
            kind = _row_kind(row)
        except PreferenceDataError as error:
            raise PreferenceDataError(f"{where}: {error}") from None
        first_kind = first_kind or kind
        if kind != first_kind:
            raise PreferenceDataError(f"{where}: {kind} row in a file of {first_kind} rows ({first_where}); "
                                      "expected one format per file")
        for column in OPTIONAL_FIELDS:
            if (column in row) != (column in first):
                has, lacks = (where, first_where) if column in row else (first_where, where)
                raise PreferenceDataError(f"{where}: field {column!r} on some rows only ({has} has it, {lacks} "
                                          "has not); expected it on every row or on none")


def _to_dataset(path: Path, rows: list[tuple[str, dict]]) -> datasets.Dataset:
    columns = list(dict.fromkeys(column for _, row in rows for column in row))
    try:
        return datasets.Dataset.from_dict({column: [row.get(column) for _, row in rows] for column in columns})
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError) as error:
        raise PreferenceDataError(f"{path}: {_mixed_types(rows, columns)}; expected one JSON type per field "
                                  f"(pyarrow: {error})") from None


def _mixed_types(rows: list[tuple[str, dict]], columns: list[str]) -> str:
    """Where a field first changes its JSON type between rows."""
    for column in columns:
        seen = {}
        for where, row in rows:
            value = row.get(column)
            if value is not None:
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                seen.setdefault("number" if number else type(value).__name__, where)
            if len(seen) > 1:
                (kind, at), (other, other_at) = seen.items()
                return f"field {column!r} is {kind} at {at} but {other} at {other_at}"
    return "a field's nested values change type between rows"
