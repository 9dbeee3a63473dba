"""The recipe end to end, as a user runs it: a real subprocess over a YAML config; the data sets it reads; the
recipe's form (a real module of public names) and its end (`RunFinisher`)."""

import ast
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerControl, TrainerState

import bt_peft
from bt_peft import (BradleyTerryModelConfig, BradleyTerryScriptArguments, RunFinisher, bt_reward, load_qlora_model,
                     load_split)
from bt_peft.data import DEMO_DATA
from bt_peft.finish import release_weights
from conftest import fp32_args, preference_rows, write_preference_splits

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
    scalar = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "scalar")  # written by default
    with torch.no_grad():
        scalar_reward = scalar(**tokenizer(first["prompt"] + first["chosen"], return_tensors="pt")).logits
    assert scalar.config.num_labels == 1 and abs(scalar_reward[0, 0].item() - reward.item()) <= 1e-5


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


def test_the_recipe_is_one_module_of_public_names_that_the_script_runs():
    """`bt_peft/recipe.py` is the flow (no link), `recipes/qlora_llama3.py` runs it, and every bt-peft name the recipe
    imports is public, so a copy of the file runs outside the package."""
    import bt_peft.recipe as recipe

    path = Path(recipe.__file__)
    assert not path.is_symlink() and path.resolve().parent == Path(bt_peft.__file__).resolve().parent
    imported = [(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bt_peft") for alias in node.names]
    assert imported and all(module == "bt_peft" and name in bt_peft.__all__ for module, name in imported), imported
    script = ast.parse(RECIPE.read_text())
    assert [(node.module, [alias.name for alias in node.names]) for node in script.body
            if isinstance(node, (ast.Import, ast.ImportFrom))] == [("bt_peft.recipe", ["main"])]


def finisher_of(output_dir: Path, **script_settings) -> RunFinisher:
    script_args = BradleyTerryScriptArguments(dataset_name="bt_peft:demo", **script_settings)
    return RunFinisher(script_args, fp32_args(output_dir), BradleyTerryModelConfig(model_name_or_path="unused"))


def test_finisher_evaluates_before_training_unless_resumed_from_an_evaluated_checkpoint(tmp_path):
    finisher, args = finisher_of(tmp_path), fp32_args(tmp_path)
    finisher.on_train_begin(args, TrainerState(), TrainerControl())
    assert args.eval_on_start and finisher.start_step == 0
    evaluated = TrainerState(global_step=4, log_history=[{"eval_loss": 0.7, "step": 0}, {"loss": 0.6, "step": 4}])
    finisher.on_train_begin(args, evaluated, TrainerControl())
    assert not args.eval_on_start and finisher.start_step == 4
    with pytest.raises(ValueError, match="resuming at step 4: the checkpoint's log history has no evaluation before"):
        finisher.on_train_begin(args, TrainerState(global_step=4, log_history=[{"loss": 0.6, "step": 4}]),
                                TrainerControl())


def test_finisher_refuses_existing_outputs_before_training_and_a_trainer_it_did_not_watch(trained, tmp_path):
    (tmp_path / "scalar").mkdir()
    (tmp_path / "scalar" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="scalar is not empty"):
        finisher_of(tmp_path, export_scalar=True)
    finisher = finisher_of(tmp_path, export_scalar=False)
    trainer, _ = trained
    with pytest.raises(ValueError, match=r"did not have this finisher among its callbacks \(callbacks=\[finisher\]\)"):
        finisher.finish(trainer, load_split(DEMO_DATA, "dev", 2))


def test_release_weights_frees_a_4bit_model_that_is_still_referenced(tiny_llama_dir):
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    dtypes = [param.dtype for param in model.parameters()]
    assert sum(param.numel() for param in model.parameters()) > 0
    release_weights(model)
    assert sum(tensor.numel() for tensor in [*model.parameters(), *model.buffers()]) == 0
    assert [param.dtype for param in model.parameters()] == dtypes
