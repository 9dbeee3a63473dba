"""The recipe's merge check: the merged checkpoint within a memory budget (GPU, host RAM, then streamed from disk),
and the recipe's outputs complete whatever happens to the check."""

import json
from pathlib import Path

import pytest
import torch

from bt_peft import merge_and_save, score
from bt_peft.evaluation.merge_check import checkpoint_bytes, compare_with_merged, merged_memory_budget, pair_texts
from conftest import preference_rows, write_preference_splits


@pytest.fixture(scope="module")
def exact_merge(trained, tmp_path_factory):
    trainer, adapter = trained
    merged = merge_and_save(adapter, tmp_path_factory.mktemp("check") / "merged", dtype=torch.float32, from_4bit=True)
    texts = pair_texts(preference_rows(1))
    return merged, texts, score(trainer.model, trainer.processing_class, texts, max_length=64)


def test_pair_texts_are_the_chosen_then_the_rejected_texts():
    rows = preference_rows(1)
    chosen, rejected = ([row["prompt"] + row[side] for row in rows] for side in ("chosen", "rejected"))
    assert pair_texts(rows) == chosen + rejected


def test_default_host_budget_is_a_quarter_of_the_bf16_size(exact_merge):
    merged, _, _ = exact_merge
    assert merged_memory_budget(merged) == {"cpu": int(checkpoint_bytes(merged) / 2 / 4)}  # fp32 checkpoint
    assert merged_memory_budget(merged, 123) == {"cpu": 123}


@pytest.mark.parametrize("host_bytes, device", [(0, "disk"), (10**9, "cpu")], ids=["streamed-from-disk", "in-ram"])
def test_merged_rewards_within_any_host_budget_equal_the_trained_ones(exact_merge, host_bytes, device):
    merged, texts, trained_rewards = exact_merge
    result = compare_with_merged(merged, texts, trained_rewards, max_length=64, max_host_bytes=host_bytes)
    assert result["merge_check"]["status"] == "done"
    assert set(result["merge_check"]["placement"]) == {device}
    assert result["merged_vs_trained_max_abs_reward_diff"] <= 1e-5
    assert len(result["scored_pairs"]) == len(texts) // 2
    assert result["scored_pairs"][0]["chosen_reward"] == pytest.approx(trained_rewards[0].item(), abs=1e-5)


def test_compare_refuses_rewards_that_do_not_match_the_texts(exact_merge):
    merged, texts, trained_rewards = exact_merge
    with pytest.raises(ValueError, match="two per pair"):
        compare_with_merged(merged, texts, trained_rewards[:-1])


def test_recipe_writes_summary_and_card_when_the_check_fails(tiny_llama_dir, tmp_path, monkeypatch):
    """Whatever happens to the check (here the host runs out of memory), the outputs of hours of training are written,
    the summary says what happened, and the run then ends with the check's error."""
    import bt_peft.finish as finish
    import bt_peft.recipe as recipe

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no room for the merged model")

    monkeypatch.setattr(finish, "compare_with_merged", out_of_memory)
    data = write_preference_splits(tmp_path, preference_rows())
    output = tmp_path / "out"
    argv = [f"--model_name_or_path={tiny_llama_dir}", "--dtype=float32", f"--dataset_name={data}",
            "--dataset_test_split=dev", "--merge_dtype=float32", f"--output_dir={output}", "--use_cpu=true",
            "--bf16=false", "--max_length=64", "--per_device_train_batch_size=4", "--max_steps=1", "--report_to=none",
            "--save_strategy=no", "--activation_checkpointing=false", "--max_eval_samples=4"]
    with pytest.raises(MemoryError, match="no room"):
        recipe.main(argv)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["merge_check"] == {"status": "failed", "error": "MemoryError: no room for the merged model"}
    assert summary["steps"] == 1 and "eval_accuracy_after" in summary
    card = (output / "merged" / "README.md").read_text()
    assert "eval accuracy after training" in card
