"""The recipe's settings: every TRL `ModelConfig`/`ScriptArguments` field is honoured or refused by name."""

import pytest
import torch
from trl import ModelConfig

from bt_peft.export.model_card import training_settings
from bt_peft.training.model_config import BradleyTerryModelConfig
from bt_peft.training.qlora import load_qlora_model
from conftest import fp32_args

REFUSED = [("use_peft", False), ("load_in_4bit", False), ("load_in_8bit", True), ("bnb_4bit_quant_type", "fp4"),
           ("use_bnb_nested_quant", False), ("use_dora", True), ("lora_target_parameters", ["experts.weight"]),
           ("lora_task_type", "CAUSAL_LM"), ("model_revision", "v2"), ("dtype", "auto")]


def test_defaults_say_what_qlora_training_does():
    config = BradleyTerryModelConfig(model_name_or_path="m")
    assert config.use_peft and config.load_in_4bit and config.use_bnb_nested_quant
    assert config.lora_task_type == "SEQ_CLS" and config.bnb_4bit_quant_type == "nf4" and not config.load_in_8bit
    assert isinstance(config, ModelConfig)


@pytest.mark.parametrize("name, value", REFUSED, ids=[name for name, _ in REFUSED])
def test_each_setting_the_recipe_does_not_do_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"unsupported model settings: {name}="):
        BradleyTerryModelConfig(model_name_or_path="m", **{name: value})


def test_rslora_and_modules_to_save_change_the_model(tiny_llama_dir):
    plain, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, lora_r=4, lora_alpha=8)
    model, _ = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, lora_r=4, lora_alpha=8, use_rslora=True,
                                modules_to_save=["norm"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert plain.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 8 / 4
    assert layer.scaling["default"] == 8 / 4**0.5
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert any("norm.modules_to_save" in name for name in trainable)
    assert any("score.modules_to_save" in name for name in trainable)
    assert not any("norm.modules_to_save" in name for name, param in plain.named_parameters())


def test_model_card_reports_rslora_and_the_modules_trained_in_full(tmp_path):
    model_args = BradleyTerryModelConfig(model_name_or_path="m", use_rslora=True, lora_modules_to_save=["norm"],
                                         lora_target_modules=["q_proj"])
    settings = training_settings(fp32_args(tmp_path), model_args, 3)
    assert settings["LoRA scaling"] == "alpha / sqrt(r) (rsLoRA)" and settings["trained in full"] == "the head, norm"
    assert settings["LoRA targets"] == "q_proj"


@pytest.mark.parametrize("flag, name", [("--dataset_streaming=true", "dataset_streaming"),
                                        ("--ignore_bias_buffers=true", "ignore_bias_buffers"),
                                        ("--merge_dtype=int8", "merge_dtype"), ("--use_dora=true", "use_dora"),
                                        ('--model_init_kwargs={"revision": "v2"}', "model_init_kwargs")])
def test_recipe_refuses_settings_it_would_ignore_before_loading_anything(tmp_path, flag, name):
    import bt_peft.recipe as recipe

    argv = ["--model_name_or_path=/nonexistent", "--dataset_name=bt_peft:demo", f"--output_dir={tmp_path}",
            "--use_cpu=true", "--bf16=false", flag]
    with pytest.raises(ValueError, match=name):
        recipe.main(argv)
