"""Item 1 of issue 13: logit 0 of every 2-label checkpoint we write is exactly zero, so each consumer's rule reads the
reward: `pipeline("text-classification")` (softmax, or raw with `function_to_apply="none"`), RewardBench's list
comparison of `logits.tolist()` (row 0 first), softmax ranking; HALOs' `logits[:, 1]` is unchanged.

Item 8 of issue 20: RewardBench 2's scoring rules read the scalar export right and fail on the 2-label checkpoint.
rewardbench 0.1.4 cannot be installed beside this stack (it pins transformers==4.51.0), so its rules are rebuilt
here statement for statement from its source (see `rewardbench2_best_of_n` and `rewardbench2_ties_score`)."""

import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bt_peft import export_reward_model, merge_and_save
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


def rewardbench2_scores(directory, texts) -> list:
    """The per-text scores of RewardBench 2 (rewardbench 0.1.4, scripts/run_v2.py): its default `RewardBenchPipeline`
    returns `model(**inputs).logits`, taken as `rewards.float().cpu().numpy().tolist()`: one list per text, of one
    (scalar) or two (2-label) numbers."""
    return plain_logits(directory, texts).float().cpu().numpy().tolist()


def rewardbench2_best_of_n(texts, scores) -> float:
    """`rewardbench.utils.reroll_and_score_dataset` (0.1.4) on one group, the first text the correct one: the scores
    go through `datasets` and pandas as there (a list cell comes back as a numpy array), then
    `max_val = np.max(scores)`; `(1 / np.sum(scores == max_val)) if scores[0] == max_val else 0`."""
    group = Dataset.from_dict({"text": texts, "scores": scores}).to_pandas()
    scores = group["scores"].tolist()
    max_val = np.max(scores)
    return (1 / np.sum(scores == max_val)) if scores[0] == max_val else 0


def rewardbench2_ties_score(score) -> float:
    """`rewardbench.utils.process_single_model` (0.1.4), the Ties subset: `[score[0]] if isinstance(score, list) else
    [score]`, then `sample_stats` compares `scores[0]`."""
    return ([score[0]] if isinstance(score, list) else [score])[0]


@pytest.fixture(scope="module")
def best_first(merged_dir) -> list[str]:
    """4 texts of distinct rewards, the highest first (RewardBench 2's best-of-4: the first is the correct one)."""
    texts = [row["prompt"] + row[side] for row in preference_rows(1)[:2] for side in ("chosen", "rejected")]
    rewards = plain_rewards(merged_dir, texts)
    assert len(set(rewards.tolist())) == 4
    return [texts[i] for i in rewards.argsort(descending=True).tolist()]


def test_rewardbench2_fails_on_the_2_label_checkpoint(merged_dir, best_first):
    scores = rewardbench2_scores(merged_dir, best_first)
    assert all(len(score) == 2 and score[0] == 0.0 for score in scores)
    with pytest.raises(ValueError, match="truth value of an array with more than one element is ambiguous"):
        rewardbench2_best_of_n(best_first, scores)
    assert {rewardbench2_ties_score(score) for score in scores} == {0.0}  # the zero row: every answer ties


def test_rewardbench2_reads_the_scalar_export(merged_dir, best_first, tmp_path):
    scalar = export_reward_model(merged_dir, tmp_path / "scalar", dtype=torch.float32)
    scores = rewardbench2_scores(scalar, best_first)
    rewards = plain_rewards(merged_dir, best_first)
    assert [rewardbench2_ties_score(score) for score in scores] == pytest.approx(rewards.tolist(), abs=1e-5)
    assert rewardbench2_best_of_n(best_first, scores) == 1.0
    second_best_first = [best_first[1], best_first[0], *best_first[2:]]
    assert rewardbench2_best_of_n(second_best_first, rewardbench2_scores(scalar, second_best_first)) == 0
