"""AutoModelForBradleyTerry: always a 2-label head, pad id set, and a Bradley-Terry save on the returned object."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaForCausalLM, LlamaForSequenceClassification

from bt_peft.modeling import AutoModelForBradleyTerry, BradleyTerrySaveMixin

from conftest import build_tokenizer, tiny_llama_config

ID2LABEL_JSON = {"0": "unused", "1": "reward"}


def causal_lm_dir(path, **config_overrides):
    """Save a tiny random causal-LM Llama with the given config overrides."""
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(build_tokenizer()), **config_overrides)).save_pretrained(path)
    return path


def reward_dir(path, num_labels):
    """Save a tiny Llama reward checkpoint with a `num_labels` head, as plain transformers would."""
    torch.manual_seed(1)
    LlamaForSequenceClassification(tiny_llama_config(len(build_tokenizer()), num_labels=num_labels, pad_token_id=2)).save_pretrained(path)
    return path


def logits_of(model, input_ids=((0, 5, 9, 17, 1), (0, 30, 40, 50, 60))):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(input_ids)).logits


def saved_config(path):
    return json.loads((path / "config.json").read_text())


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)


def test_causal_lm_checkpoint_gets_two_label_head(model):
    assert model.config.num_labels == 2
    assert model.score.weight.shape == (2, 64)
    assert model.config.id2label == {0: "unused", 1: "reward"}
    assert logits_of(model).shape == (2, 2)


def test_new_head_starts_at_zero(model):
    assert not model.score.weight.any(), "a new head is all zeros: every reward 0, the first loss ln 2"
    assert not logits_of(model).any()
    assert model.model.embed_tokens.weight.any(), "the body is loaded, not zeroed"


def test_loading_info_is_returned_when_asked(tiny_llama_dir):
    model, info = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, output_loading_info=True)
    assert isinstance(model, BradleyTerrySaveMixin)
    assert "score.weight" in info["missing_keys"]


@pytest.mark.parametrize("num_labels", [1, 5])
def test_num_labels_argument_is_overridden(tiny_llama_dir, num_labels):
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, num_labels=num_labels)
    assert model.config.num_labels == 2
    assert model.score.weight.shape == (2, 64)


def test_config_argument_with_three_labels_is_overridden(tiny_llama_dir):
    config = tiny_llama_config(len(build_tokenizer()), num_labels=3)
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, config=config)
    assert model.score.weight.shape == (2, 64)
    assert config.num_labels == 3, "the caller's config object is left unchanged"


def test_three_label_checkpoint_gets_new_two_label_head(tmp_path, caplog):
    path = reward_dir(tmp_path, num_labels=3)
    original = LlamaForSequenceClassification.from_pretrained(path)
    with caplog.at_level("WARNING", logger="bt_peft.modeling"):
        model = AutoModelForBradleyTerry.from_pretrained(path)
    assert model.score.weight.shape == (2, 64)
    assert not model.score.weight.any(), "the new 2-label head starts at zero"
    assert "3-label head" in caplog.text
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight), "the body is loaded"


def test_one_label_reward_checkpoint_keeps_its_reward_as_row_1(tmp_path):
    path = reward_dir(tmp_path, num_labels=1)
    original = LlamaForSequenceClassification.from_pretrained(path)
    model = AutoModelForBradleyTerry.from_pretrained(path)
    assert model.score.weight.shape == (2, 64) and model.config.num_labels == 2
    assert torch.equal(model.score.weight[1], original.score.weight[0])
    assert not model.score.weight[0].any()
    torch.testing.assert_close(logits_of(model)[..., 1], logits_of(original)[..., 0], atol=1e-6, rtol=0)


def test_two_label_reward_checkpoint_keeps_its_head(tmp_path):
    path = reward_dir(tmp_path, num_labels=2)
    original = LlamaForSequenceClassification.from_pretrained(path)
    model = AutoModelForBradleyTerry.from_pretrained(path)
    assert original.score.weight.any(), "a trained head: not zeroed on loading"
    assert torch.equal(model.score.weight, original.score.weight)
    assert torch.equal(logits_of(model), logits_of(original))


def test_pad_id_defaults_to_eos(model):
    assert model.config.pad_token_id == 1 == model.config.eos_token_id


def test_pad_id_is_first_of_several_eos_ids(tmp_path):
    model = AutoModelForBradleyTerry.from_pretrained(causal_lm_dir(tmp_path, eos_token_id=[5, 6, 7]))
    assert model.config.pad_token_id == 5


def test_existing_pad_id_is_kept(tmp_path):
    model = AutoModelForBradleyTerry.from_pretrained(causal_lm_dir(tmp_path, pad_token_id=2))
    assert model.config.pad_token_id == 2


@pytest.mark.parametrize("dtype_argument", ["dtype", "torch_dtype"])
def test_dtype_is_passed_on(tiny_llama_dir, dtype_argument):
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, **{dtype_argument: torch.bfloat16})
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.score.weight.dtype == torch.bfloat16


def test_attn_implementation_is_passed_on(tiny_llama_dir):
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"


def test_returned_object_keeps_its_architecture_class(model):
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert isinstance(model, LlamaForSequenceClassification)
    assert isinstance(model, BradleyTerrySaveMixin)


def test_save_writes_bradley_terry_config_in_safetensors(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = saved_config(tmp_path)
    assert config["id2label"] == ID2LABEL_JSON
    assert config["pad_token_id"] == 1
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))


def test_saved_checkpoint_loads_in_plain_transformers(tiny_llama_dir, tmp_path):
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight)  # a trained head: non-zero rewards to compare
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(reloaded) is LlamaForSequenceClassification
    assert reloaded.config.num_labels == 2
    assert torch.equal(logits_of(reloaded), logits_of(model))


def test_save_writes_two_labels_after_num_labels_set_to_one(tiny_llama_dir, tmp_path):
    model = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir)
    model.config.num_labels = 1
    model.save_pretrained(tmp_path)
    assert saved_config(tmp_path)["id2label"] == ID2LABEL_JSON
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).config.num_labels == 2


def test_save_refuses_other_save_function(model, tmp_path):
    with pytest.raises(ValueError, match="save_function"):
        model.save_pretrained(tmp_path, save_function=lambda obj, path: None)
    assert not (tmp_path / "model.safetensors").exists()


def test_from_config_gives_two_label_model_with_bradley_terry_save(tmp_path):
    config = tiny_llama_config(len(build_tokenizer()), num_labels=4)
    model = AutoModelForBradleyTerry.from_config(config)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.score.weight.shape == (2, 64)
    assert not model.score.weight.any(), "a new head starts at zero here too"
    assert model.config.pad_token_id == 1
    assert config.num_labels == 4, "the caller's config object is left unchanged"
    model.config.num_labels = 1
    model.save_pretrained(tmp_path)
    assert saved_config(tmp_path)["id2label"] == ID2LABEL_JSON


def test_model_pickles_and_unpickles_in_a_new_process(tmp_path):
    import pickle
    import subprocess
    import sys

    model = AutoModelForBradleyTerry.from_config(tiny_llama_config(64))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    code = "import pickle, sys; m = pickle.load(open(sys.argv[1], 'rb')); m.save_pretrained(sys.argv[2]); print(type(m).__name__)"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pkl"), str(tmp_path / "saved")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "LlamaForSequenceClassification"
    assert '"1": "reward"' in (tmp_path / "saved" / "config.json").read_text()
