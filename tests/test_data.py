"""Tests for bt_peft.data: preference rows of every supported format -> left-truncated token-id pairs."""

import json
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from bt_peft.data import (
    PreparationReport,
    encode,
    load_preference_file,
    prepare_preference_dataset,
    split_hh_dialogue,
    to_prompt_and_responses,
    truncate_left,
)

HH_TRAIN = Path(__file__).resolve().parents[1].parent / "shared/data/hh-rlhf-harmless-base/train.jsonl"
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
def hh_rows() -> datasets.Dataset:
    return load_preference_file(HH_TRAIN)


def messages(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


# --- HH-RLHF splitting -------------------------------------------------------------------------------------------


def test_split_hh_dialogue_reproduces_every_real_train_row(hh_rows):
    assert len(hh_rows) > 1000
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
    rows = hh_rows.select(range(200))
    out, report = prepare_preference_dataset(rows, tok, max_length=128)
    assert report.total == 200 and report.truncated > 0
    for row, pair in zip(rows, out):  # no pair of these rows is identical, so rows and outputs align
        for text, ids in ((row["chosen"], pair["chosen_ids"]), (row["rejected"], pair["rejected_ids"])):
            full = encode(tok, text)
            assert len(ids) == min(len(full), 128) and ids[0] == tok.bos_token_id and ids[-20:] == full[-20:]


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


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"chosen": ["a", "b", None], "rejected": ["x", "y", "z"]},
         "train row 2: column 'chosen' must be a string or a list of {role, content} messages, got NoneType"),
        ({"chosen": [1, 2], "rejected": ["x", "y"]},
         "train row 0: column 'chosen' must be a string or a list of {role, content} messages, got int"),
        ({"chosen": ["a"], "rejected": [messages("x")]},
         "train row 0: column 'rejected' must be a string like 'chosen', got list"),
        ({"prompt": ["p"], "chosen": [messages("a")], "rejected": [messages("b")]},
         "train row 0: column 'prompt' must be a list of {role, content} messages like 'chosen', got str"),
        ({"chosen_ids": [[1, 2], None], "rejected_ids": [[1, 3], [1]]},
         "train row 1: column 'chosen_ids' must be a list of token ids (int), got NoneType"),
        ({"chosen": ["a", "b"], "rejected": ["x", "y"], "margin": [1.0, None]},
         "train row 1: column 'margin' must be a number, got NoneType"),
        ({"text": ["a"]}, "train: expected columns 'chosen' and 'rejected'"),
    ],
)
def test_malformed_rows_name_row_and_column(tok, columns, message):
    with pytest.raises(ValueError) as error:
        prepare_preference_dataset(datasets.Dataset.from_dict(columns), tok, max_length=None)
    assert message in str(error.value)


# --- files -------------------------------------------------------------------------------------------------------


def test_load_preference_file(tmp_path):
    rows = [{"chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "d"}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert load_preference_file(jsonl).to_list() == rows
    plain = tmp_path / "pairs.json"
    plain.write_text(json.dumps(rows))
    assert load_preference_file(str(plain)).to_list() == rows


def test_load_preference_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "a", "rejected": "b"}\n\n{"chosen": "a",\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: invalid JSON"):
        load_preference_file(bad)
    bad.write_text('{"chosen": "a", "rejected": "b"}\n[1]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: expected a JSON object, got list"):
        load_preference_file(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n{"chosen": "a"},\n{oops}\n]')
    with pytest.raises(ValueError, match=r"bad.json line 3: invalid JSON"):
        load_preference_file(bad_json)
    with pytest.raises(ValueError, match=r"expected \.jsonl or \.json"):
        load_preference_file(tmp_path / "pairs.csv")
