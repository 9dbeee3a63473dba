"""Item 1 of issue 13: logit 0 of every 2-label checkpoint we write is exactly zero, so each consumer's rule reads the
reward: `pipeline("text-classification")` (softmax, or raw with `function_to_apply="none"`), RewardBench's list
comparison of `logits.tolist()` (row 0 first), softmax ranking; HALOs' `logits[:, 1]` is unchanged."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bt_peft import merge_and_save
from conftest import preference_rows
from test_merge import TEXTS, plain_rewards

ADAPTER_HEAD = "base_model.model.score.weight"


@pytest.fixture(scope="module")
def merged_dir(trained, tmp_path_factory):
    _, adapter = trained
    return merge_and_save(adapter, tmp_path_factory.mktemp("consumers") / "merged", dtype=torch.float32)


def plain_logits(directory, texts) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def test_adapters_we_save_keep_row_0_at_zero(trained):
    _, adapter = trained
    head = load_file(adapter / "adapter_model.safetensors")[ADAPTER_HEAD]
    assert head.shape[0] == 2
    assert torch.equal(head[0], torch.zeros_like(head[0]))
    assert head[1].abs().sum() > 0  # the reward row was trained


@pytest.mark.parametrize("low_memory", [True, False])
def test_merge_writes_row_0_as_zeros_for_a_head_trained_elsewhere(trained, merged_dir, tmp_path, low_memory):
    _, adapter = trained
    foreign = tmp_path / "foreign-adapter"
    shutil.copytree(adapter, foreign)
    weights = load_file(foreign / "adapter_model.safetensors")
    torch.manual_seed(1)
    weights[ADAPTER_HEAD][0] = torch.randn_like(weights[ADAPTER_HEAD][0])  # e.g. a random row 0 from an old head
    save_file(weights, foreign / "adapter_model.safetensors")
    merged = merge_and_save(foreign, tmp_path / "merged", dtype=torch.float32, low_memory=low_memory)
    logits = plain_logits(merged, TEXTS)
    assert torch.equal(logits[:, 0], torch.zeros(len(TEXTS)))
    torch.testing.assert_close(logits[:, 1], plain_rewards(merged_dir, TEXTS), atol=1e-6, rtol=0)  # HALOs' reward


def test_pipeline_default_softmax_gives_sigmoid_of_the_reward(merged_dir):
    rewards = plain_rewards(merged_dir, TEXTS)
    classify = pipeline("text-classification", model=str(merged_dir), dtype=torch.float32)
    outputs = classify(TEXTS, top_k=None)
    for output, reward in zip(outputs, rewards.tolist()):
        by_label = {entry["label"]: entry["score"] for entry in output}
        assert by_label["reward"] == pytest.approx(torch.sigmoid(torch.tensor(reward)).item(), abs=1e-6)
        assert by_label["unused"] == pytest.approx(torch.sigmoid(torch.tensor(-reward)).item(), abs=1e-6)


def test_pipeline_without_activation_gives_the_reward_and_a_zero(merged_dir):
    rewards = plain_rewards(merged_dir, TEXTS)
    classify = pipeline("text-classification", model=str(merged_dir), dtype=torch.float32)
    outputs = classify(TEXTS, top_k=None, function_to_apply="none")
    for output, reward in zip(outputs, rewards.tolist()):
        by_label = {entry["label"]: entry["score"] for entry in output}
        assert by_label["reward"] == pytest.approx(reward, abs=1e-6)
        assert by_label["unused"] == 0.0


def test_rewardbench_list_rule_and_softmax_rank_by_the_reward(merged_dir):
    rows = preference_rows(1)
    chosen = plain_logits(merged_dir, [row["prompt"] + row["chosen"] for row in rows])
    rejected = plain_logits(merged_dir, [row["prompt"] + row["rejected"] for row in rows])
    # RewardBench: `logits.tolist()` per text, compared as Python lists (row 0 first, then row 1).
    list_rule = [c > r for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert list_rule == (chosen[:, 1] > rejected[:, 1]).tolist()
    assert any(list_rule) and list_rule != (chosen[:, 1] < rejected[:, 1]).tolist()
    # Softmax over both logits (vLLM /classify, TEI /predict): the same order as the reward, exactly.
    logits = torch.cat([chosen, rejected])
    assert torch.equal(torch.softmax(logits, -1)[:, 1].argsort(), logits[:, 1].argsort())
