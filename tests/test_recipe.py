"""The recipe end to end, as a user runs it: a real subprocess over a YAML config; the data sets it reads."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bt_peft import bt_reward
from bt_peft.data import DEMO_DATA, load_split
from conftest import preference_rows, write_preference_splits

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
        "save_strategy: 'no'\nlogging_steps: 4\nuse_rslora: true\nlora_modules_to_save: [norm]\n"
    )
    result = subprocess.run([sys.executable, str(RECIPE), "--config", str(config), "--seed", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["script_args"]["dataset_test_split"] == "dev"
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert summary["merged_vs_trained_max_abs_reward_diff"] <= 1e-5  # rsLoRA and the extra module merged too
    adapter_config = json.loads((Path(summary["adapter_dir"]) / "adapter_config.json").read_text())
    assert adapter_config["use_rslora"] and "norm" in adapter_config["modules_to_save"]
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


def test_hh_directory_loads_by_split(hh_dir):
    assert len(load_split(str(hh_dir), "train")) == 100 and len(load_split(str(hh_dir), "dev", 10)) == 10


def recipe_config(tiny_llama_dir, root: Path, output: Path) -> Path:
    """12 steps of 4 pairs with a checkpoint every 2 steps, LoRA dropout on (so the RNG state matters), constant lr."""
    data = write_preference_splits(root, preference_rows())
    config = root / "config.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\nlora_dropout: 0.1\ndataset_name: {data}\n"
        f"dataset_test_split: dev\nmax_eval_samples: 4\nnum_score_examples: 1\nmerge_dtype: float32\n"
        f"output_dir: {output}\nuse_cpu: true\nbf16: false\nmax_length: 64\nper_device_train_batch_size: 4\n"
        "max_steps: 12\nlearning_rate: 5.0e-3\nlr_scheduler_type: cosine\nreport_to: none\nsave_strategy: steps\n"
        "save_steps: 2\nlogging_steps: 1\nactivation_checkpointing: false\ndisable_tqdm: true\nseed: 3\n"
    )
    return config


def test_recipe_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tiny_llama_dir, tmp_path):
    """Defect 5: `--resume_from_checkpoint true` was accepted and ignored (training restarted from step 0)."""
    from bt_peft.training.checkpointing import last_complete_checkpoint

    killed_dir, full_dir = tmp_path / "killed", tmp_path / "full"
    config = recipe_config(tiny_llama_dir, tmp_path, killed_dir)
    crashing = subprocess.Popen([sys.executable, str(RECIPE), "--config", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while last_complete_checkpoint(killed_dir) is None and crashing.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    crashing.send_signal(signal.SIGKILL)
    crashing.wait()
    assert not (killed_dir / "summary.json").exists(), "the run ended before it could be killed"

    resumed = subprocess.run([sys.executable, str(RECIPE), "--config", str(config), "--resume_from_checkpoint", "true"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = subprocess.run([sys.executable, str(RECIPE), "--config", str(config), "--output_dir", str(full_dir)],
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    summary, reference = (json.loads((path / "summary.json").read_text()) for path in (killed_dir, full_dir))
    assert 2 <= summary["resumed_from_step"] < 12 and reference["resumed_from_step"] == 0
    assert resumed.stdout.count("'loss':") == 12 - summary["resumed_from_step"]  # the steps it trained itself
    assert summary["steps"] == reference["steps"] == 12
    assert summary["eval_loss_before"] == reference["eval_loss_before"]  # from the checkpoint's log history
    resumed_adapter, full_adapter = (load_file(path / "adapter" / "adapter_model.safetensors")
                                     for path in (killed_dir, full_dir))
    assert resumed_adapter.keys() == full_adapter.keys()
    assert all(torch.equal(resumed_adapter[key], full_adapter[key]) for key in full_adapter)
