"""Tests for bt_peft.data: preference rows of every supported format -> left-truncated token-id pairs."""

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import bt_peft
from bt_peft.data import (
    EMPTY,
    IDENTICAL,
    PreferenceDataError,
    PreparationReport,
    encode,
    fit_pair_to_length,
    load_preference_file,
    minimal_pair_length,
    prepare_preference_dataset,
    split_hh_dialogue,
    to_prompt_and_responses,
    truncate_left,
)

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer built offline: prepends <s>, appends nothing, has a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sentences = ["Human: how do I bake bread?", "Assistant: Mix flour, water and yeast, then bake it."]
    tokenizer.train_from_iterator(sentences * 4, trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def hh_rows(hh_dir) -> datasets.Dataset:
    return load_preference_file(hh_dir / "train.jsonl")


def messages(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


# --- HH-RLHF splitting -------------------------------------------------------------------------------------------


def test_split_hh_dialogue_reproduces_every_real_train_row(hh_rows):
    assert len(hh_rows) == 100
    for row in hh_rows:
        prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"])
        assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
        assert prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:")
        assert to_prompt_and_responses(row) == (prompt, chosen, rejected)


def test_split_hh_dialogue_uses_the_last_shared_assistant_turn():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bread?\n\nAssistant:"
    chosen, rejected = " Bake it.\n\nHuman: thanks\n\nAssistant: Sure.", " No."
    assert split_hh_dialogue(prompt + chosen, prompt + rejected) == (prompt, chosen, rejected)


def test_split_hh_dialogue_errors():
    with pytest.raises(ValueError, match="has no '\\\\n\\\\nAssistant:' turn"):
        split_hh_dialogue("\n\nHuman: hi", "\n\nHuman: hello")
    with pytest.raises(ValueError, match="share no"):
        split_hh_dialogue("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


# --- formats -----------------------------------------------------------------------------------------------------


def test_standard_explicit_prompt(tok):
    row = {"prompt": "How do I bake bread?", "chosen": " Mix flour.", "rejected": " No idea."}
    assert to_prompt_and_responses(row) == ("How do I bake bread?", " Mix flour.", " No idea.")
    out, report = prepare_preference_dataset(datasets.Dataset.from_list([row]), tok, max_length=None)
    assert out.column_names == ["chosen_ids", "rejected_ids"]
    assert out[0] == {"chosen_ids": encode(tok, row["prompt"] + row["chosen"]),
                      "rejected_ids": encode(tok, row["prompt"] + row["rejected"])}
    assert (report.total, report.kept, report.truncated) == (1, 1, 0)


def test_standard_implicit_prompt_keeps_whole_texts(tok):
    row = {"chosen": "Bread: mix flour.", "rejected": "Bread: no idea."}
    assert to_prompt_and_responses(row) == (None, row["chosen"], row["rejected"])
    out, _ = prepare_preference_dataset(datasets.Dataset.from_list([row]), tok, max_length=None)
    assert out[0]["chosen_ids"] == encode(tok, row["chosen"])


def test_raw_hh_text_is_split_and_encoded_whole(tok, hh_rows):
    rows = hh_rows.select(range(20))
    out, report = prepare_preference_dataset(rows, tok, max_length=None)
    assert report.kept == 20
    assert out[3]["chosen_ids"] == encode(tok, rows[3]["chosen"])


def test_conversational_explicit_prompt(tok):
    answer = {"role": "assistant", "content": "Mix flour."}
    row = {"prompt": messages("Bread?"), "chosen": [answer], "rejected": [answer | {"content": "No."}]}
    prompt, chosen, rejected = to_prompt_and_responses(row)
    assert prompt == row["prompt"] and chosen == row["chosen"]
    out, _ = prepare_preference_dataset(datasets.Dataset.from_list([row]), tok, max_length=None)
    assert out[0]["chosen_ids"] == encode(tok, messages("Bread?", "Mix flour."))
    assert out[0]["rejected_ids"] == encode(tok, messages("Bread?", "No."))


def test_conversational_implicit_prompt(tok):
    row = {"chosen": messages("Bread?", "Mix flour."), "rejected": messages("Bread?", "No.")}
    assert to_prompt_and_responses(row) == (None, row["chosen"], row["rejected"])
    out, _ = prepare_preference_dataset(datasets.Dataset.from_list([row]), tok, max_length=None)
    assert out[0]["chosen_ids"] == encode(tok, row["chosen"])


def test_pretokenized_rows_are_only_truncated_and_margin_is_kept_as_float(tok):
    bos = tok.bos_token_id
    rows = {"chosen_ids": [[bos, 10, 11, 12, 13], [bos, 5]], "rejected_ids": [[bos, 20, 21], [bos, 6]]}
    rows["margin"] = [1, 0.5]
    out, report = prepare_preference_dataset(datasets.Dataset.from_dict(rows), tok, max_length=3)
    assert out.column_names == ["chosen_ids", "rejected_ids", "margin"]
    assert out["chosen_ids"] == [[bos, 12, 13], [bos, 5]]
    assert out["rejected_ids"] == [[bos, 20, 21], [bos, 6]]
    assert out.features["margin"].dtype == "float64" and out["margin"] == [1.0, 0.5]
    assert (report.truncated, report.response_cut) == (1, 1)


def test_margin_column_on_text_rows(tok):
    rows = datasets.Dataset.from_dict({"chosen": ["a b", "c"], "rejected": ["a c", "d"], "margin": [2, 3]})
    out, _ = prepare_preference_dataset(rows, tok, max_length=None)
    assert out["margin"] == [2.0, 3.0] and all(isinstance(m, float) for m in out["margin"])


# --- encode and truncation ---------------------------------------------------------------------------------------


def test_encode_never_appends_eos(tok):
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert encode(tok, "") == [bos]
    ids = encode(tok, "Mix flour and bake it.")
    assert ids[0] == bos and eos not in ids and ids == tok("Mix flour and bake it.")["input_ids"]
    chat = messages("Bread?", "Mix flour.")
    ids = encode(tok, chat)
    assert ids == tok("<|user|>Bread?</s><|assistant|>Mix flour.</s>", add_special_tokens=False)["input_ids"]
    assert ids[0] != bos and ids.count(eos) == 2  # the template's own </s>, nothing added


def test_truncate_left():
    ids = list(range(10))
    assert truncate_left(ids, 5, keep_prefix=1) == [0, 6, 7, 8, 9]
    assert truncate_left(ids, 5, keep_prefix=0) == [5, 6, 7, 8, 9]
    assert truncate_left(ids, 10, keep_prefix=1) == ids
    with pytest.raises(ValueError, match="max_length"):
        truncate_left(ids, 1, keep_prefix=1)


def test_truncation_keeps_bos_and_response_end_on_real_hh(tok, hh_rows):
    rows = hh_rows  # all 100 pairs of the sample
    out, report = prepare_preference_dataset(rows, tok, max_length=128)
    assert report.total == 100 and report.truncated > 0
    aligned = 0
    for row, pair in zip(rows, out):  # no pair of these rows is identical, so rows and outputs align
        fulls = encode(tok, row["chosen"]), encode(tok, row["rejected"])
        cut = max(map(len, fulls)) - 128
        ids = pair["chosen_ids"], pair["rejected_ids"]
        assert max(map(len, ids)) == min(max(map(len, fulls)), 128)
        for full, kept in zip(fulls, ids):
            assert kept[0] == tok.bos_token_id and kept[-20:] == full[-20:] and len(kept) <= 128
        if cut > 0 and len(ids[0]) == len(fulls[0]) - cut and len(ids[1]) == len(fulls[1]) - cut:
            aligned += 1  # both sides lost the same prompt tokens, so they still share their prompt
            assert _shared(ids) >= _shared(fulls) - cut
    assert aligned >= report.truncated - report.response_cut > 0


def _shared(pair) -> int:
    return next((i for i, (a, b) in enumerate(zip(*pair)) if a != b), min(map(len, pair)))


def test_pair_truncation_cuts_both_sides_by_the_same_prompt_tokens():
    prompt, chosen, rejected = [0, 10, 11, 12, 13, 14], [20, 21, 22], [30]
    c, r = fit_pair_to_length(prompt + chosen, prompt + rejected, 6, special_prefix=[0])
    assert (c, r) == ([0, 13, 14, 20, 21, 22], [0, 13, 14, 30])
    # a reply too long to keep any prompt: each side is cut on its own
    c, r = fit_pair_to_length([0, 10, 20, 21, 22, 23, 24], [0, 10, 30], 4, special_prefix=[0])
    assert (c, r) == ([0, 22, 23, 24], [0, 10, 30])


def test_conversational_truncation_keeps_no_prefix(tok):
    row = {"chosen": messages("Bread? " * 20, "Mix flour."), "rejected": messages("Bread? " * 20, "No.")}
    out, report = prepare_preference_dataset(datasets.Dataset.from_list([row]), tok, max_length=10)
    assert out[0]["chosen_ids"] == encode(tok, row["chosen"])[-10:]
    assert (report.truncated, report.response_cut) == (1, 0)


# --- report ------------------------------------------------------------------------------------------------------


def test_report_counts_on_hand_made_set(tok):
    long = " ".join(["how do I bake bread"] * 10)
    rows = [
        {"prompt": "Bread?", "chosen": " Mix flour.", "rejected": " No."},  # short: untouched
        {"prompt": long, "chosen": " Mix flour.", "rejected": " No."},  # prompt cut only
        {"prompt": "Bread?", "chosen": " " + long, "rejected": " No."},  # response cut too
        {"prompt": long, "chosen": " Yes" + long, "rejected": " No" + long},  # identical once cut
        {"prompt": "Bread?", "chosen": " Same.", "rejected": " Same."},  # identical from the start
    ]
    max_length = len(encode(tok, long)) // 2
    out, report = prepare_preference_dataset(datasets.Dataset.from_list(rows), tok, max_length, name="eval")
    assert report == PreparationReport("eval", 5, 3, 3, 2, {"identical after truncation": 2})
    assert str(report) == (
        "eval: 5 pairs, 3 kept, 3 truncated (prompt cut from the left), 2 with the response cut too, "
        "skipped: 2 identical after truncation"
    )
    assert out[1]["chosen_ids"][-3:] == encode(tok, " Mix flour.")[-3:]
    assert all(len(ids) <= max_length for ids in [*out["chosen_ids"], *out["rejected_ids"]])


def test_report_without_skips():
    assert str(PreparationReport("train", 2, 2, 0, 0, {})).endswith("skipped: none")


# --- files -------------------------------------------------------------------------------------------------------


def test_load_preference_file(tmp_path):
    rows = [{"chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "d"}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert load_preference_file(jsonl).to_list() == rows
    plain = tmp_path / "pairs.json"
    plain.write_text(json.dumps(rows))
    assert load_preference_file(str(plain)).to_list() == rows


def test_load_preference_file_keeps_a_bom_and_line_separators_inside_strings(tmp_path):
    rows = [{"chosen": "a\u2028b", "rejected": "c\x85d", "id": 1}, {"chosen": "e", "rejected": "f", "id": 2.5}]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode())
    assert load_preference_file(path).to_list() == rows


def test_minimal_pair_length(tok):
    assert minimal_pair_length(tok) == 3  # <s> + one prompt token + one response token


# --- bad input table ---------------------------------------------------------------------------------------------
# Structural problems (the file or dataset is not what it claims to be) raise PreferenceDataError naming the source,
# row, field, what was found and what was expected. Well-formed pairs without signal are skipped and counted.


@dataclass
class File:
    """A file written to a temporary directory, loaded with `load_preference_file`, then prepared."""

    name: str
    content: str | bytes


@dataclass
class Rows:
    """An in-memory dataset (`from_list` of rows or `from_dict` of columns), prepared directly."""

    data: list[dict] | dict[str, list]
    max_length: int | None = None


@dataclass
class Error:
    parts: tuple[str, ...]


@dataclass
class Report:
    kept: int
    skipped: dict
    truncated: int = 0


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def error(*parts: str) -> Error:
    return Error(parts)


GOOD = {"chosen": "Mix flour.", "rejected": "No."}
USER = {"role": "user", "content": "Bread?"}
LONG = " ".join(["how do I bake bread"] * 10)
HH_PROMPT = "\n\nHuman: can I steal a puppy?\n\nAssistant:"

BAD_INPUTS = [
    pytest.param(File("pairs.jsonl", jsonl({"rejected": "No."})),
                 error("pairs.jsonl line 1: field 'chosen' is missing; expected a string or a list of"),
                 id="missing chosen"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, {"chosen": "Yes."})),
                 error("pairs.jsonl line 2: field 'rejected' is missing; expected"), id="missing rejected"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen": 3, "rejected": "No."})),
                 error("line 1: field 'chosen': expected a string or a list of {role, content} messages, got int 3"),
                 id="non-string chosen"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, {"chosen": "Yes.", "rejected": None})),
                 error("line 2: field 'rejected': expected a string like 'chosen', got None"), id="null rejected"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, GOOD | {"prompt": "Bread?"})),
                 error("pairs.jsonl line 2: field 'prompt' on some rows only", "line 2 has it",
                       "line 1 has not); expected it on every row or on none"), id="prompt on some rows only"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"prompt": None})),
                 error("line 1: field 'prompt': expected a string like 'chosen' (a dataset with a prompt field needs "
                       "one on every row), got None"), id="null prompt"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen": "\n\nHuman: hi\n\nHuman: yes", "rejected": "\n\nHuman: hi"})),
                 error("pairs.jsonl line 1: fields 'chosen' and 'rejected': HH-RLHF pair has no",
                       "expected both to share the dialogue"), id="HH without Assistant turn"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen": [{"role": "human", "content": "hi"}], "rejected": [USER]})),
                 error("line 1: field 'chosen[0].role': expected one of system, user, assistant, tool, got str 'human'"),
                 id="conversation with a bad role"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen": [USER], "rejected": [USER, {"role": "assistant"}]})),
                 error("line 1: field 'rejected[1].content': expected a string, got None"),
                 id="conversation message without content"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen": ["hi"], "rejected": [USER]})),
                 error("line 1: field 'chosen[0]': expected a {role, content} message, got str 'hi'"),
                 id="conversation of strings"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, {"chosen": [USER], "rejected": [USER]})),
                 error("pairs.jsonl line 2: messages row in a file of text rows", "line 1); expected one format per file"),
                 id="text and conversation rows mixed"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, {"chosen_ids": [1, 5], "rejected_ids": [1, 6]})),
                 error("line 2: token ids row in a file of text rows"), id="text and token-id rows mixed"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD, '{"chosen": "a", "rejected": }')),
                 error("pairs.jsonl line 2: invalid JSON (Expecting value)"), id="invalid JSON line"),
    pytest.param(File("pairs.jsonl", jsonl([GOOD])),
                 error("pairs.jsonl line 1: expected a JSON object, got list"), id="row that is no object"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD).encode() + b'{"chosen": "caf\xe9", "rejected": "No."}\n'),
                 error("pairs.jsonl line 2: byte 0xe9 at offset", "is not UTF-8; expected a UTF-8 file"),
                 id="non-UTF-8 bytes"),
    pytest.param(File("pairs.csv", "chosen,rejected\na,b\n"),
                 error("pairs.csv: unsupported file type '.csv'; expected .jsonl or .json"), id="unsupported file type"),
    pytest.param(File("pairs.jsonl", ""), error("pairs.jsonl: no rows; expected at least one preference pair"),
                 id="empty file"),
    pytest.param(File("pairs.jsonl", "\n  \n"), error("pairs.jsonl: no rows"), id="blank lines only"),
    pytest.param(File("pairs.json", json.dumps(GOOD)), error("pairs.json: expected a JSON list of objects, got dict"),
                 id=".json that is no list"),
    pytest.param(File("pairs.json", json.dumps([GOOD, {"chosen": "Yes."}])),
                 error("pairs.json item 1: field 'rejected' is missing"), id=".json item malformed"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"id": 1}, GOOD | {"id": "b"})),
                 error("field 'id' is number at", "line 1 but str at", "line 2; expected one JSON type per field"),
                 id="extra field changing type"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"margin": "high"})),
                 error("line 1: field 'margin': expected a finite number, got str 'high'"), id="margin not a number"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"margin": float("nan")})),
                 error("line 1: field 'margin': expected a finite number, got float nan"), id="margin NaN"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"margin": 1}, GOOD)),
                 error("line 2: field 'margin' on some rows only"), id="margin on some rows only"),
    pytest.param(File("pairs.jsonl", jsonl({"chosen_ids": [1, "a"], "rejected_ids": [1, 6]})),
                 error("line 1: field 'chosen_ids': expected a list of token ids (int), got list [1, 'a']"),
                 id="token ids not ints"),
    pytest.param(Rows({"chosen_ids": [[1, 5], [1, 9999]], "rejected_ids": [[1, 6], [1, 7]]}),
                 error("train index 1: field 'chosen_ids': expected token ids in [0, 308), got 9999"),
                 id="token id outside the vocabulary"),
    pytest.param(Rows({"chosen_ids": [[1, -3]], "rejected_ids": [[1, 7]]}),
                 error("train index 0: field 'chosen_ids': expected token ids in [0, 308), got -3"),
                 id="negative token id"),
    pytest.param(Rows({"text": ["a"]}), error("train: expected fields 'chosen' and 'rejected' (optionally 'prompt') "
                                              "or 'chosen_ids' and 'rejected_ids', got ['text']"),
                 id="dataset without chosen/rejected"),
    pytest.param(Rows({"chosen": [], "rejected": []}), error("train: the dataset has no rows"), id="empty dataset"),
    pytest.param(Rows({"chosen": ["a", "b", None], "rejected": ["x", "y", "z"]}),
                 error("train index 2: field 'chosen': expected a string or a list of {role, content} messages, "
                       "got None"), id="null chosen in a dataset"),
    pytest.param(Rows([GOOD | {"prompt": "Bread?"}, GOOD | {"prompt": None}]),
                 error("train index 1: field 'prompt': expected a string like 'chosen' (a dataset with a prompt field"),
                 id="prompt on some dataset rows only"),
    pytest.param(Rows([{"chosen": "Same.", "rejected": "Same."}]),
                 error("train: no pair left to train on (train: 1 pairs, 0 kept", "skipped: 1 identical after"),
                 id="every pair skipped"),
    # skipped and counted in the report
    pytest.param(Rows([{"chosen": "Same.", "rejected": "Same."}, GOOD]), Report(1, {IDENTICAL: 1}),
                 id="chosen == rejected"),
    pytest.param(Rows([{"prompt": "Bread?", "chosen": " Yes" + LONG, "rejected": " No" + LONG},
                  {"prompt": "Q", "chosen": " a", "rejected": " b"}], max_length=8),
                 Report(1, {IDENTICAL: 1}, truncated=1), id="replies differ only in the part cut off"),
    pytest.param(Rows([{"chosen": "", "rejected": "No."}, GOOD]), Report(1, {EMPTY: 1}), id="empty string"),
    pytest.param(Rows([{"chosen": "Yes.", "rejected": " \n "}, GOOD]), Report(1, {EMPTY: 1}), id="whitespace only"),
    pytest.param(Rows([{"chosen": [], "rejected": [USER]}, {"chosen": [USER], "rejected": [USER | {"content": "x"}]}]),
                 Report(1, {EMPTY: 1}), id="empty conversation"),
    pytest.param(Rows({"chosen_ids": [[], [1, 5]], "rejected_ids": [[1, 6], [1, 7]]}), Report(1, {EMPTY: 1}),
                 id="empty token ids"),
    # kept: well formed, with signal
    pytest.param(Rows([{"chosen": HH_PROMPT + " ", "rejected": HH_PROMPT + " Sure, here is how."}]), Report(1, {}),
                 id="empty reply after a prompt (HH train row 542)"),
    pytest.param(Rows([{"prompt": LONG, "chosen": " Mix flour.", "rejected": " No."}], max_length=8),
                 Report(1, {}, truncated=1), id="pair longer than max_length"),
    pytest.param(File("pairs.jsonl", jsonl(GOOD | {"id": 1}, GOOD | {"source": "web"})), Report(2, {}),
                 id="unknown fields"),
]


@pytest.mark.parametrize(("source", "expected"), BAD_INPUTS)
def test_bad_input_table(tok, tmp_path, source, expected):
    def prepare():
        if isinstance(source, File):
            path = tmp_path / source.name
            path.write_bytes(source.content if isinstance(source.content, bytes) else source.content.encode())
            return prepare_preference_dataset(load_preference_file(path), tok, max_length=None)
        data = source.data
        dataset = datasets.Dataset.from_list(data) if isinstance(data, list) else datasets.Dataset.from_dict(data)
        return prepare_preference_dataset(dataset, tok, source.max_length)

    if isinstance(expected, Report):
        _, report = prepare()
        assert (report.kept, report.skipped, report.truncated) == (expected.kept, expected.skipped, expected.truncated)
        return
    with pytest.raises(PreferenceDataError) as raised:
        prepare()
    message = str(raised.value)
    assert all(part in message for part in expected.parts), message
    if isinstance(source, File):
        assert str(tmp_path / source.name) in message
    # raised by bt-peft's own code with its own message, not from deep inside datasets, pyarrow or json
    assert Path(str(raised.traceback[-1].path)).parent == Path(bt_peft.__file__).parent
