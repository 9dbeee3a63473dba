"""Multi-process training through Hugging Face accelerate: real `accelerate launch` subprocesses on the CPU.

DDP: the recipe launched on 2 CPU processes (gloo, `recipes/accelerate/ddp_cpu.yaml`) with 2 pairs per process
trains the adapter that one process trains with 4 pairs per step, same seed and data order: accelerate's sampler
permutes the pairs with the seed alone, and with `split_batches=False` process k takes per-device batch k of each
group, so a step's global batch is the single process's batch. The weights then agree up to float32 rounding, not
bit for bit: the loss is a mean per process, then averaged by the all-reduce (not one mean over 4 pairs), rows are
padded or packed per process, and Adam's first steps divide gradients by their own magnitude. After 3 steps at
learning rate 5e-3 the adapters differ by at most ~3e-6 (measured); the tolerance is 2e-5, while a step moves
weights by up to 5e-3 and training without the gradient all-reduce moves them ~1e-2 apart.

FSDP-QLoRA: accelerate refuses FSDP without an accelerator, so `fsdp_shard_check.py` shards the 4-bit model with
torch's FSDP under `torchrun` (2 CPU processes) as `recipes/accelerate/fsdp_qlora.yaml` configures it.

DeepSpeed ZeRO-3: accelerate's DeepSpeed launcher wants an accelerator too, so `zero3_check.py` switches ZeRO-3 on
with training arguments, loads the 4-bit model with `load_qlora_model` and partitions it with DeepSpeed's engine on
its CPU accelerator, under `torchrun` (2 CPU processes).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from bt_peft.training.qlora import load_qlora_model
from conftest import preference_rows, write_preference_splits

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "qlora_llama3.py"
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate"
BIN = Path(sys.executable).parent
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def job(tiny_llama_dir, tmp_path_factory) -> Path:
    """A recipe config: the tiny Llama in 4-bit (fp32 compute), 16 training pairs, 6 evaluation pairs, 3 steps."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_preference_splits(root, preference_rows())
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_llama_dir), "dtype": "float32", "lora_dropout": 0.0,
        "dataset_name": str(data), "dataset_test_split": "dev", "max_eval_samples": 6, "num_score_examples": 2,
        "merge_dtype": "float32", "merge_from_4bit": True, "use_cpu": True, "bf16": False, "max_length": 64,
        "max_steps": 3, "learning_rate": 5.0e-3, "activation_checkpointing": False, "report_to": "none",
        "save_strategy": "no", "logging_steps": 1, "seed": 0, "disable_tqdm": True,
    }))
    return config


def run(launcher: list[str], config: Path, output: Path, pairs_per_process: int, *flags: str) -> tuple[dict, str]:
    """Run the recipe; returns its summary.json and stderr (where the recipe shows bt-peft's logs)."""
    command = launcher + [str(RECIPE), "--config", str(config), "--output_dir", str(output),
                          "--per_device_train_batch_size", str(pairs_per_process),
                          "--per_device_eval_batch_size", str(pairs_per_process), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return json.loads((output / "summary.json").read_text()), result.stderr


def adapter(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["adapter_dir"]) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def one_process(job, tmp_path_factory) -> dict:
    """The reference: one process, 4 pairs per step, the trainer's default batch layout."""
    summary, _ = run([sys.executable], job, tmp_path_factory.mktemp("one") / "out", 4)
    return summary


@pytest.mark.parametrize("layout", [["--packing", "true", "--padding_free", "true"],
                                    ["--packing", "false", "--padding_free", "false"]], ids=["packed", "padded"])
def test_two_ddp_processes_train_the_adapter_of_one(job, one_process, tmp_path, layout):
    launcher = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIGS / "ddp_cpu.yaml")]
    summary, logs = run(launcher, job, tmp_path / "out", 2, *layout)

    assert summary["processes"] == 2 and summary["steps"] == one_process["steps"] == 3
    reference, trained = adapter(one_process), adapter(summary)
    assert trained.keys() == reference.keys()
    for name, weight in reference.items():
        assert (trained[name] - weight).abs().max().item() <= TOLERANCE, name
    moved = max(weight.abs().max().item() for name, weight in trained.items() if "lora_B" in name)  # zero at start
    assert moved > 100 * TOLERANCE
    # evaluation gathers the pairs of both processes (6 pairs: the last batch of process 1 is padding, dropped)
    for key in ("eval_loss_before", "eval_accuracy_before", "eval_loss_after", "eval_accuracy_after"):
        assert summary[key] == pytest.approx(one_process[key], abs=1e-4), key
    # one process prepared the data report, merged after both finished, and reloaded the merge
    assert logs.count("bt-peft data: train") == 1
    assert summary["merged_vs_trained_max_abs_reward_diff"] <= 1e-5
    assert len(summary["scored_pairs"]) == 2


@pytest.mark.parametrize("checkpointing", ["none", "non-reentrant", "reentrant"])
def test_fsdp_shards_the_4bit_weights_and_computes_what_one_process_does(tiny_llama_dir, tmp_path, checkpointing):
    """With either kind of activation checkpointing too (issue 20 item 14: the FSDP config uses non-reentrant,
    peft's FSDP-QLoRA example reentrant)."""
    report_path = tmp_path / "fsdp.json"
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", str(ROOT / "tests" / "fsdp_shard_check.py"),
               str(tiny_llama_dir), str(report_path), checkpointing]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(report_path.read_text())

    assert report["world_size"] == 2
    four_bit_units = [unit for unit in report["units"] if unit["four_bit"]]
    assert len(four_bit_units) == 2  # one per decoder layer
    for unit in four_bit_units:  # flattened with the layer's other frozen weights, half on each process
        assert unit["dtype"] == "torch.bfloat16" and unit["local"] == -(-unit["full"] // 2)
    assert report["max_abs_reward_diff"] == 0.0 and report["max_abs_step_diff"] == 0.0
    assert report["max_abs_score_diff"] == 0.0  # the recipe's scoring of a sharded model, on every process
    assert report["trainable"] == 17  # 2 layers x 4 projections x (A, B) + the head
    assert report["forwards_in_backward"] == (checkpointing != "none")  # the layer was recomputed in the backward


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (the test extra installs it: pip install -e '.[test]')")
def test_zero3_loads_partitions_the_4bit_weights_and_computes_what_one_process_does(tiny_llama_dir, tmp_path):
    """Issue 20 item 1: with ZeRO-3 switched on, a `device_map` is refused by transformers; the load passes none."""
    report_path = tmp_path / "zero3.json"
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", str(ROOT / "tests" / "zero3_check.py"),
               str(tiny_llama_dir), str(report_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(report_path.read_text())

    assert report["zero3_enabled"] and report["world_size"] == 2 and report["device"] == "cpu"
    assert len(report["four_bit"]) == 14  # 2 layers x 7 linear layers, each partitioned: half on each process
    for weight in report["four_bit"]:
        assert weight["local"] == -(-weight["full"] // 2)
    assert report["max_abs_reward_diff"] == 0.0
    assert report["max_rel_step_diff"] <= 1e-6  # float rounding (measured 1.6e-7); the step moves LoRA weights by ~47
    assert report["trainable"] == 17  # 2 layers x 4 projections x (A, B) + the head


def test_quant_storage_makes_every_frozen_weight_the_compute_dtype(tiny_llama_dir):
    texts = ["Human: hi Assistant: Hello!"]
    torch.manual_seed(0)
    default, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.bfloat16, gradient_checkpointing=False)
    torch.manual_seed(0)
    fsdp_ready, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.bfloat16, quant_storage=torch.bfloat16,
                                     gradient_checkpointing=False)
    assert {p.dtype for p in default.parameters() if not p.requires_grad} == {torch.uint8, torch.bfloat16, torch.float32}
    assert {p.dtype for p in fsdp_ready.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in fsdp_ready.parameters() if p.requires_grad} == {torch.float32}
    batch = tokenizer(texts, return_tensors="pt")
    with torch.no_grad():  # the same NF4 codes, only stored in another dtype (the new heads are zero: compare states)
        hidden = [model(**batch, output_hidden_states=True).hidden_states[-1] for model in (default, fsdp_ready)]
        assert hidden[0].abs().sum() > 0 and torch.equal(*hidden)
    with pytest.raises(ValueError, match="quant_storage=torch.float32 must equal compute_dtype=torch.bfloat16"):
        load_qlora_model(tiny_llama_dir, compute_dtype=torch.bfloat16, quant_storage=torch.float32)


@pytest.mark.parametrize("name, kind, processes", [("ddp", DistributedType.MULTI_GPU, 8),
                                                   ("ddp_cpu", DistributedType.MULTI_GPU, 2),
                                                   ("fsdp_qlora", DistributedType.FSDP, 2),
                                                   ("deepspeed_zero3", DistributedType.DEEPSPEED, 8)])
def test_accelerate_configs_load(name, kind, processes):
    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_processes == processes
    if kind == DistributedType.FSDP:
        fsdp = config.fsdp_config
        assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and not fsdp["fsdp_use_orig_params"]
    if kind == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_init_flag"]


def test_fsdp_recipe_config_stores_4bit_weights_in_the_compute_dtype():
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "llama3_8b_hh_fsdp.yaml").read_text())
    assert config["bnb_4bit_quant_storage"] == config["dtype"] == "bfloat16"
    single = yaml.safe_load((ROOT / "recipes" / "configs" / "llama3_8b_hh.yaml").read_text())
    global_batch = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * 2
    assert global_batch == single["per_device_train_batch_size"] * single["gradient_accumulation_steps"]
