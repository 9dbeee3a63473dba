import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from bt_peft import AutoModelForBradleyTerry, load_qlora_model
from bt_peft.safe_loading import PickleCheckpointError, load_adapter, refuse_pickle, safe_pretrained_kwargs

PICKLE_MESSAGE = r"is a pickle checkpoint \({}\); loading it can run arbitrary code; convert it to safetensors or pass allow_pickle=True"


@pytest.fixture(scope="module")
def pickle_checkpoint(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with its weights as `pytorch_model.bin` only (as older Hub repos ship them)."""
    path = tmp_path_factory.mktemp("pickle-llama")
    shutil.copytree(tiny_llama_dir, path, dirs_exist_ok=True)
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def test_a_pickle_checkpoint_is_refused_by_every_model_loader(pickle_checkpoint):
    message = PICKLE_MESSAGE.format("pytorch_model.bin")
    with pytest.raises(PickleCheckpointError, match=message):
        AutoModelForBradleyTerry.from_pretrained(pickle_checkpoint)
    with pytest.raises(PickleCheckpointError, match=message):
        load_qlora_model(pickle_checkpoint, compute_dtype=torch.float32)


def test_a_pickle_checkpoint_loads_when_the_caller_opts_in(pickle_checkpoint, tiny_llama_dir):
    model = AutoModelForBradleyTerry.from_pretrained(pickle_checkpoint, allow_pickle=True)
    reference = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)
    assert model.config.num_labels == 2
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_safetensors_next_to_pickle_files_load_and_single_pickle_files_are_refused(pickle_checkpoint, tmp_path):
    refuse_pickle(pickle_checkpoint, allow_pickle=True)  # opted in: nothing checked
    both = tmp_path / "both"
    shutil.copytree(pickle_checkpoint, both)
    (both / "model.safetensors").write_bytes(b"")  # what transformers and peft load first
    refuse_pickle(both)
    with pytest.raises(PickleCheckpointError, match=PICKLE_MESSAGE.format("pytorch_model.bin")):
        refuse_pickle(pickle_checkpoint / "pytorch_model.bin")


def test_from_pretrained_kwargs_default_to_safetensors_and_no_remote_code():
    assert safe_pretrained_kwargs("org/model", False, {"dtype": "auto"}) == {
        "dtype": "auto", "trust_remote_code": False, "use_safetensors": True}
    assert safe_pretrained_kwargs("org/model", True, {"trust_remote_code": True}) == {"trust_remote_code": True}


def test_a_pickle_adapter_is_refused_unless_allowed(tiny_llama_dir, tmp_path):
    def base():
        torch.manual_seed(0)
        return AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)

    lora = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["score"], task_type="SEQ_CLS")
    get_peft_model(base(), lora).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(PickleCheckpointError, match=PICKLE_MESSAGE.format("adapter_model.bin")):
        load_adapter(base(), tmp_path)
    loaded = load_adapter(base(), tmp_path, allow_pickle=True)
    assert loaded.peft_config["default"].r == 2


def test_a_checkpoint_needing_remote_code_fails_clearly_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForSequenceClassification\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-bt'\n"
        "class CustomModel(LlamaForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "custom-bt", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2,
        "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForSequenceClassification": "custom.CustomModel"},
    }))
    remote_code = r"(?s)contains custom code which must be executed.*trust_remote_code=True"
    with pytest.raises(ValueError, match=remote_code):
        AutoModelForBradleyTerry.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=remote_code):
        load_qlora_model(tmp_path, compute_dtype=torch.float32)
    assert not marker.exists()
