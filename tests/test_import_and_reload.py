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


def save_openrlhf_checkpoint(tiny_llama_dir, directory, value_head_prefix: str | None):
    """A reward checkpoint laid out as OpenRLHF's `get_llm_for_sequence_regression` model saves it: the backbone's
    weights under `model.`, a 1-output bias-free value head under `value_head` (older releases' default prefix), and
    `value_head_prefix` in `config.json` as its trainer records it (None: an old checkpoint that does not)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    backbone = AutoModel.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    torch.manual_seed(1)
    head = torch.nn.Linear(backbone.config.hidden_size, 1, bias=False)
    tensors = {f"model.{key}": value.contiguous() for key, value in backbone.state_dict().items()}
    save_file(tensors | {"value_head.weight": head.weight.detach().contiguous()}, directory / "model.safetensors",
              metadata={"format": "pt"})
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    if value_head_prefix is not None:
        config.value_head_prefix = value_head_prefix
    config.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(directory)
    return directory


def test_an_openrlhf_value_head_checkpoint_is_imported_with_openrlhfs_reward(tiny_llama_dir, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from consumers import openrlhf_style_rewards  # OpenRLHF's reading, rebuilt from its source

    from bt_peft import load_for_scoring, score

    path = save_openrlhf_checkpoint(tiny_llama_dir, tmp_path, "value_head")
    model, tokenizer = load_for_scoring(path)
    rewards = score(model, tokenizer, TEXTS)
    expected = openrlhf_style_rewards(path, [tokenizer.bos_token + text for text in TEXTS])
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=0)
    assert rewards.abs().min() > 0 and torch.equal(model.score.weight[0], torch.zeros(model.config.hidden_size))
    model.save_pretrained(tmp_path / "resaved")  # the imported head is saved as `score`, and reloads as it is
    resaved = AutoModelForBradleyTerry.from_pretrained(tmp_path / "resaved", allow_new_head=False)
    torch.testing.assert_close(score(resaved, tokenizer, TEXTS), rewards, atol=1e-6, rtol=0)


def test_checkpoints_without_a_trained_head_are_refused_naming_the_heads(tiny_llama_dir, tmp_path):
    from bt_peft import load_for_scoring, score
    from bt_peft.modeling import UntrainedHeadError
    from bt_peft.serving.model import load_served_model

    with pytest.raises(UntrainedHeadError, match=r"expected the reward head 'score'.*found lm_head\.weight"):
        load_for_scoring(tiny_llama_dir)
    with pytest.raises(UntrainedHeadError, match="found lm_head.weight"):
        load_served_model(str(tiny_llama_dir))
    old_openrlhf = save_openrlhf_checkpoint(tiny_llama_dir, tmp_path, None)
    with pytest.raises(UntrainedHeadError, match=r"found value_head\.weight.*add \"value_head_prefix\": \"value_head\""):
        load_for_scoring(old_openrlhf)
    baseline, tokenizer = load_for_scoring(tiny_llama_dir, allow_new_head=True)  # bt-peft eval --compare's baseline
    assert torch.equal(score(baseline, tokenizer, TEXTS), torch.zeros(len(TEXTS)))


def test_an_adapter_that_saved_no_head_is_refused(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from bt_peft import load_for_scoring
    from bt_peft.modeling import UntrainedHeadError

    base = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)  # no task type: no head
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path)
    with pytest.raises(UntrainedHeadError, match=r"saved no reward head: expected 'score' in its modules_to_save"):
        load_for_scoring(tmp_path)
