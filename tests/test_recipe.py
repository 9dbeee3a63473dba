"""The recipe end to end, as a user runs it: a real subprocess over a YAML config; the data sets it reads."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bt_peft import bt_reward
from bt_peft.data import DEMO_DATA, load_split
from conftest import preference_rows

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "qlora_llama3.py"


def test_recipe_trains_evaluates_merges_and_scores(tiny_llama_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in preference_rows()))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\ndataset_name: {data}\ndataset_test_split: dev\n"
        f"merge_dtype: float32\nmerge_from_4bit: true\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\nbf16: false\n"
        "max_length: 64\nper_device_train_batch_size: 4\nmax_steps: 8\nlearning_rate: 5.0e-3\nreport_to: none\n"
        "save_strategy: 'no'\nlogging_steps: 4\n"
    )
    result = subprocess.run([sys.executable, str(RECIPE), "--config", str(config), "--seed", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["script_args"]["dataset_test_split"] == "dev"
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert summary["merged_vs_trained_max_abs_reward_diff"] <= 1e-5
    merged = AutoModelForSequenceClassification.from_pretrained(summary["merged_dir"])
    tokenizer = AutoTokenizer.from_pretrained(summary["merged_dir"])
    first = preference_rows(1)[0]
    with torch.no_grad():
        reward = bt_reward(merged(**tokenizer(first["prompt"] + first["chosen"], return_tensors="pt")).logits)
    assert abs(reward.item() - summary["scored_pairs"][0]["chosen_reward"]) <= 1e-5


def test_demo_data_is_bundled_with_the_package():
    train, dev = load_split(DEMO_DATA, "train"), load_split(DEMO_DATA, "dev", 10)
    assert len(train) == 400 and len(dev) == 10
    assert not set(train["prompt"]) & set(load_split(DEMO_DATA, "dev")["prompt"])


def test_shared_hh_directory_loads_by_split(hh_dir):
    assert len(load_split(str(hh_dir), "train")) == 1112 and len(load_split(str(hh_dir), "dev", 50)) == 50
