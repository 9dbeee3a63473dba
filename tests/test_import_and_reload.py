"""Issue 13 items 3 and 4: a 1-label reward checkpoint (a real `trl.RewardTrainer` output) imports with its rewards,
and an adapter directory reloads with its pad token, through `AutoModelForBradleyTerry` and through PEFT's own
two-step reload (right rewards once the pad id is right, a loud error otherwise), under left and right padding."""

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardTrainer

from bt_peft import AutoModelForBradleyTerry, merge_and_save
from conftest import fp32_args, preference_rows
from test_merge import TEXTS, plain_rewards


@pytest.fixture(scope="module")
def trl_reward_dir(tiny_llama_dir, tmp_path_factory):
    """A 1-label reward model trained 2 steps by stock `trl.RewardTrainer` and saved with its tokenizer."""
    output = tmp_path_factory.mktemp("trl-rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = "<|endoftext|>"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=fp32_args(output, max_steps=2), processing_class=tokenizer,
                            train_dataset=Dataset.from_list(preference_rows()))
    trainer.train()
    trainer.save_model(str(output / "model"))
    return output / "model"


def batch_logits(model, tokenizer, texts, padding_side="right") -> torch.Tensor:
    tokenizer.padding_side = padding_side
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def test_a_trl_reward_trainer_checkpoint_keeps_its_rewards(trl_reward_dir):
    tokenizer = AutoTokenizer.from_pretrained(trl_reward_dir)
    trl_model = AutoModelForSequenceClassification.from_pretrained(trl_reward_dir, dtype=torch.float32).eval()
    assert trl_model.config.num_labels == 1
    expected = batch_logits(trl_model, tokenizer, TEXTS)[:, 0]
    imported = AutoModelForBradleyTerry.from_pretrained(trl_reward_dir, dtype=torch.float32).eval()
    assert imported.config.num_labels == 2 and imported.config.problem_type is None
    logits = batch_logits(imported, tokenizer, TEXTS)
    assert expected.std() > 1e-3  # a trained, non-constant reward
    torch.testing.assert_close(logits[:, 1], expected, atol=1e-6, rtol=0)
    assert torch.equal(logits[:, 0], torch.zeros(len(TEXTS)))


@pytest.fixture(scope="module")
def merged_fp32(trained, tmp_path_factory):
    _, adapter = trained
    return merge_and_save(adapter, tmp_path_factory.mktemp("reload") / "merged", dtype=torch.float32)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_an_adapter_dir_loads_with_its_pad_token(trained, merged_fp32, padding_side):
    _, adapter = trained
    model = AutoModelForBradleyTerry.from_pretrained(adapter, dtype=torch.float32).eval()
    assert isinstance(model, PeftModel)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert model.config.pad_token_id == tokenizer.pad_token_id != model.config.eos_token_id
    rewards = batch_logits(model, tokenizer, TEXTS, padding_side)[:, 1]
    torch.testing.assert_close(rewards, plain_rewards(merged_fp32, TEXTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_peft_two_step_reload_fails_loudly_then_gives_the_trained_rewards(trained, merged_fp32, tiny_llama_dir, padding_side):
    _, adapter = trained
    base = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert model.config.pad_token_id != tokenizer.pad_token_id  # the base config pads with eos
    with pytest.raises(ValueError, match="padded with token id .* but model.config.pad_token_id is"):
        batch_logits(model, tokenizer, TEXTS, padding_side)
    model.config.pad_token_id = tokenizer.pad_token_id  # what the error says to do
    rewards = batch_logits(model, tokenizer, TEXTS, padding_side)[:, 1]
    torch.testing.assert_close(rewards, plain_rewards(merged_fp32, TEXTS), atol=1e-5, rtol=0)
