"""`append_eos`: a reward model trained with an eos ending every sequence (OpenRLHF's convention) records it in its
tokenizer, and every reader in bt-peft (`encode`, `score`, export, OpenRLHF's rule on the export) reads it there."""

import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from bt_peft import BradleyTerryRewardTrainer, export_reward_model, load_for_scoring, load_qlora_model, merge_and_save, score
from bt_peft.data import encode, fit_to_length
from bt_peft.tokenizer import APPEND_EOS_KEY, appends_eos, choose_pad_token, set_append_eos
from bt_peft.training.config import BradleyTerryRewardConfig
from conftest import CHAT_TEMPLATE, build_tokenizer, preference_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from consumers import openrlhf_style_rewards  # noqa: E402  (OpenRLHF's reading, rebuilt from its source)

TEXTS = [row["prompt"] + row[side] for row in preference_rows(1) for side in ("chosen", "rejected")]
CONVERSATION = [{"role": "user", "content": "can you help me?"}, {"role": "assistant", "content": "Sure."}]


@pytest.fixture
def tokenizers():
    """The test tokenizer (adds a BOS `<s>`, eos `</s>`, pads with `<|endoftext|>`) without and with `append_eos`."""
    plain, flagged = build_tokenizer(), build_tokenizer()
    for tokenizer in (plain, flagged):
        tokenizer.pad_token = choose_pad_token(tokenizer)
    set_append_eos(flagged, True)
    return plain, flagged


def test_encode_ends_every_sequence_with_one_eos(tokenizers):
    plain, flagged = tokenizers
    eos = flagged.eos_token_id
    for text in ("Human: hi Assistant: hello", "Human: hi Assistant: hello\n\n"):
        assert encode(flagged, text) == encode(plain, "Human: hi Assistant: hello") + [eos]
    assert encode(plain, "Human: hi")[-1] != eos  # off by default: nothing appended
    assert encode(flagged, "Human: hi</s>") == encode(plain, "Human: hi") + [eos]  # not a second one
    # the chat template ends each message with </s>: nothing to add, and trailing newlines would be cut first
    assert encode(flagged, CONVERSATION) == encode(plain, CONVERSATION) and encode(plain, CONVERSATION)[-1] == eos
    flagged.chat_template = CHAT_TEMPLATE + "\n"
    assert encode(flagged, CONVERSATION) == encode(plain, CONVERSATION)
    # cut from the left to fit max_length, the eos (where the reward is read) stays
    ids = fit_to_length(encode(flagged, "Human: " + "help me " * 40), 16, encode(flagged, ""))
    assert len(ids) == 16 and ids[0] == flagged.bos_token_id and ids[-1] == eos


def test_a_text_that_brings_its_own_bos_gets_no_second_one(tokenizers):
    """OpenRLHF's PPO sends `decode(ids, skip_special_tokens=False)`: chat-template text starts with the BOS."""
    for tokenizer in tokenizers:
        ids = encode(tokenizer, "Human: hi Assistant: hello")
        assert ids[0] == tokenizer.bos_token_id != ids[1]
        assert encode(tokenizer, tokenizer.decode(ids)) == ids


def test_the_flag_survives_save_and_load(tokenizers, tmp_path):
    _, flagged = tokenizers
    flagged.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())[APPEND_EOS_KEY] is True
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert appends_eos(reloaded) and encode(reloaded, "Human: hi")[-1] == reloaded.eos_token_id


def test_settings_that_would_read_the_wrong_token_are_refused(tokenizers):
    plain, flagged = tokenizers
    with pytest.raises(ValueError, match="pass append_eos=True"):
        set_append_eos(flagged, False)  # a tokenizer saved by an append_eos model, trained on without it
    plain.pad_token = plain.eos_token
    with pytest.raises(ValueError, match="pads with its eos token"):
        set_append_eos(plain, True)
    plain.eos_token = None
    with pytest.raises(ValueError, match="no eos token"):
        set_append_eos(plain, True)


@pytest.fixture(scope="module")
def eos_trained(tiny_llama_dir, tmp_path_factory):
    """A tiny QLoRA reward model trained with `append_eos=True`, its adapter, merge and scalar export."""
    root = tmp_path_factory.mktemp("append-eos")
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    args = BradleyTerryRewardConfig(output_dir=str(root / "run"), per_device_train_batch_size=4, max_steps=4,
                                    learning_rate=5e-3, bf16=False, report_to=[], save_strategy="no", max_length=64,
                                    seed=0, disable_tqdm=True, append_eos=True)
    trainer = BradleyTerryRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows()),
                                        processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(root / "adapter"))
    merged = merge_and_save(root / "adapter", root / "merged", dtype=torch.float32)
    scalar = export_reward_model(merged, root / "scalar", normalization=(0.0, 1.0))
    return trainer, {"adapter": root / "adapter", "merged": merged, "scalar": scalar}


def test_training_rows_end_with_eos_and_the_checkpoints_record_it(eos_trained):
    trainer, paths = eos_trained
    eos = trainer.processing_class.eos_token_id
    for column in ("chosen_ids", "rejected_ids"):
        assert all(ids[-1] == eos and ids[-2] != eos for ids in trainer.train_dataset[column])
    for form in ("adapter", "merged", "scalar"):
        assert appends_eos(AutoTokenizer.from_pretrained(paths[form])), form
    card = (paths["merged"] / "README.md").read_text()
    assert "end it with the eos token" in card and "+ tokenizer.eos_token" in card


def test_score_appends_the_eos_and_openrlhf_reads_the_same_reward(eos_trained):
    """Scored by bt-peft (text as given, eos appended) and by OpenRLHF's rule on the scalar export fed what its PPO
    sends for a finished generation (`<s>` from the prompt's template, the policy's `</s>` at the end)."""
    _, paths = eos_trained
    model, tokenizer = load_for_scoring(paths["merged"])
    rewards = score(model, tokenizer, TEXTS)
    assert torch.equal(score(model, tokenizer, [text + "</s>" for text in TEXTS]), rewards)
    sent = [tokenizer.bos_token + text + tokenizer.eos_token for text in TEXTS]
    torch.testing.assert_close(openrlhf_style_rewards(paths["scalar"], sent), rewards, atol=1e-5, rtol=0)
    # without the eos the reward is read one token early: not the trained reward
    assert not torch.allclose(openrlhf_style_rewards(paths["scalar"], [tokenizer.bos_token + t for t in TEXTS]),
                              rewards, atol=1e-3)
    adapter, adapter_tokenizer = load_for_scoring(paths["adapter"])  # the 4-bit adapter reads its tokenizer's flag too
    assert torch.equal(score(adapter, adapter_tokenizer, TEXTS), score(adapter, adapter_tokenizer, sent))
