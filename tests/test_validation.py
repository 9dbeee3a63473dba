"""Tests for bt_peft.validation: wrong set-ups fail at start, with our message, before any weights are read.

`config_only_dir` holds a real config.json and tokenizer but no weight file: a check that ran after loading would
fail with transformers' missing-weights error instead of `TrainingSetupError`.
"""

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import BartConfig, LlamaForSequenceClassification

from bt_peft import BradleyTerryRewardTrainer, load_qlora_model
from bt_peft import recipe
from bt_peft.validation import TrainingSetupError, check_4bit_support, refuse_settings, validate_training_setup
from conftest import build_tokenizer, fp32_args, preference_rows, tiny_llama_config, write_preference_splits

LLAMA_LINEAR = "down_proj, gate_proj, k_proj, o_proj, q_proj, score, up_proj, v_proj"


def test_refuse_settings_names_every_refused_field_its_value_and_why():
    args = fp32_args("out", max_length=64, seed=3)
    refuse_settings(args, {"max_length": (False, "fine"), "seed": (False, "fine")}, "unused")  # nothing refused
    with pytest.raises(ValueError) as raised:
        refuse_settings(args, {"max_length": (True, "too short"), "seed": (False, "fine"), "bf16": (True, "no bf16")},
                        "unsupported test settings")
    assert str(raised.value) == "unsupported test settings: max_length=64: too short; bf16=False: no bf16"


@pytest.fixture(scope="module")
def config_only_dir(tmp_path_factory) -> Path:
    """A Llama checkpoint directory without weights: config.json and the tokenizer only."""
    path = tmp_path_factory.mktemp("config-only")
    tokenizer = build_tokenizer()
    tiny_llama_config(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert not list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    return path


def test_a_valid_setup_passes_and_loading_then_fails_on_the_missing_weights(config_only_dir, tmp_path):
    validate_training_setup(fp32_args(tmp_path), str(config_only_dir), LoraConfig(target_modules=["q_proj", "v_proj"],
                            modules_to_save=["score"]), load_in_4bit=True)
    with pytest.raises(OSError, match="model.safetensors"):  # the control: past validation, loading is reached
        load_qlora_model(config_only_dir, compute_dtype=torch.float32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fp16": True, "use_cpu": True}, "fp16=True needs a CUDA GPU, but use_cpu=True: set fp16=False"),
        ({"max_length": 2}, "max_length=2 cannot hold a minimal pair: 1 special token(s) the tokenizer adds + 1 prompt "
                            "token + 1 response token = 3; raise max_length"),
    ],
)
def test_trainer_refuses_bad_arguments_before_loading(config_only_dir, tmp_path, overrides, message):
    with pytest.raises(TrainingSetupError) as error:
        BradleyTerryRewardTrainer(model=str(config_only_dir), args=fp32_args(tmp_path, **overrides),
                                  train_dataset=Dataset.from_list(preference_rows(1)))
    assert message in str(error.value)


def test_fp16_is_refused_only_without_a_gpu(tmp_path):
    args = fp32_args(tmp_path, fp16=True)
    if torch.cuda.is_available():
        validate_training_setup(args)
    else:
        with pytest.raises(TrainingSetupError, match="fp16=True needs a CUDA GPU, but no CUDA GPU is available"):
            validate_training_setup(args)


def test_trainer_checks_a_model_in_memory_with_its_tokenizer(tmp_path):
    tokenizer = build_tokenizer()
    model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=2))
    with pytest.raises(TrainingSetupError, match="max_length=1 cannot hold a minimal pair"):
        BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path, max_length=1),
                                  train_dataset=Dataset.from_list(preference_rows(1)), processing_class=tokenizer)
    with pytest.raises(TrainingSetupError, match=r"LoRA target_modules \['query'\] match no module"):
        BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path), peft_config=LoraConfig(target_modules=["query"]),
                                  train_dataset=Dataset.from_list(preference_rows(1)), processing_class=tokenizer)


def test_lora_targets_that_match_nothing_are_refused_before_loading(config_only_dir):
    with pytest.raises(TrainingSetupError) as error:
        load_qlora_model(config_only_dir, target_modules=["q_proj", "qkv", "attn.c_proj"])
    assert str(error.value) == (
        f"LoRA target_modules ['attn.c_proj', 'qkv'] match no module of LlamaForSequenceClassification; its Linear "
        f"layers are named: {LLAMA_LINEAR}"
    )


def test_lora_target_regex_and_suffix_follow_peft(config_only_dir):
    model = str(config_only_dir)
    validate_training_setup(model=model, lora_config=LoraConfig(target_modules=r".*layers\.\d+\.self_attn\.q_proj"))
    validate_training_setup(model=model, lora_config=LoraConfig(target_modules=["self_attn.o_proj", "mlp.up_proj"]))
    pattern = r".*attention\.query"
    with pytest.raises(TrainingSetupError) as error:
        validate_training_setup(model=model, lora_config=LoraConfig(target_modules=pattern))
    assert str(error.value).startswith(f"LoRA target_modules {[pattern]!r} match no module")


def test_trainer_refuses_a_head_name_that_is_not_there(config_only_dir, tmp_path):
    peft_config = LoraConfig(target_modules=["q_proj"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    with pytest.raises(TrainingSetupError) as error:
        BradleyTerryRewardTrainer(model=str(config_only_dir), args=fp32_args(tmp_path), peft_config=peft_config,
                                  train_dataset=Dataset.from_list(preference_rows(1)))
    assert str(error.value) == (
        "modules_to_save ['classifier'] name no module of LlamaForSequenceClassification; its classification head is "
        "'score'"
    )


def test_an_architecture_without_a_known_head_is_refused(tmp_path):
    BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32).save_pretrained(tmp_path)
    with pytest.raises(TrainingSetupError, match=r"no classification head to train: BartForSequenceClassification has "
                                                 r"none of the head attributes \('score', 'classifier'\)"):
        validate_training_setup(model=str(tmp_path))


def test_4bit_support_on_this_machine_and_on_a_device_without_a_back_end():
    check_4bit_support("cuda" if torch.cuda.is_available() else "cpu")  # the real bitsandbytes serves this device
    with pytest.raises(TrainingSetupError, match=r"bitsandbytes [\d.]+ has no 4-bit back end for device 'xla' \(it "
                                                 r"supports cpu, cuda, hpu, mps, npu, xpu\)"):
        check_4bit_support("xla")


def test_4bit_without_bitsandbytes_is_refused_before_loading(config_only_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without bitsandbytes imports
    with pytest.raises(TrainingSetupError, match=r"4-bit loading needs bitsandbytes, which cannot be imported .*: "
                                                 r"pip install -U 'bitsandbytes>="):
        load_qlora_model(config_only_dir)


def test_recipe_validates_before_training(tiny_llama_dir, tmp_path):
    """The recipe validates once, in the trainer: before the first step, after loading (`load_qlora_model` checks
    the model before reading weights, the trainer the training settings)."""
    argv = ["--model_name_or_path", str(tiny_llama_dir), "--dtype", "float32", "--dataset_name",
            str(write_preference_splits(tmp_path, preference_rows(1))), "--dataset_test_split", "dev",
            "--output_dir", str(tmp_path / "out"), "--fp16", "true", "--use_cpu", "true", "--report_to", "none"]
    with pytest.raises(TrainingSetupError, match="fp16=True needs a CUDA GPU, but use_cpu=True"):
        recipe.main(argv)
    assert not (tmp_path / "out").exists()
