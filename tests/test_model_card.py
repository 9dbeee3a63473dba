"""The model card: rendered metadata and body, parsed back by huggingface_hub; push_to_hub up to the Hub call."""

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled

from bt_peft.export.model_card import push_to_hub, upload_files, write_model_card


def test_card_metadata_and_body_parse_back(tmp_path):
    path = write_model_card(
        tmp_path,
        base_model="meta-llama/Meta-Llama-3-8B",
        dataset="Anthropic/hh-rlhf",
        training_settings={"learning rate": 1e-4, "optimizer steps": 200},
        metrics={"accuracy": 0.6912345, "accuracy 95% CI": "[0.66, 0.72]"},
        from_4bit=True,
        repo_id="someone/llama3-bt-rm",
        license="llama3",
    )
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == "meta-llama/Meta-Llama-3-8B" and data["datasets"] == ["Anthropic/hh-rlhf"]
    assert data["library_name"] == "transformers" and data["license"] == "llama3"
    assert {"reward-model", "bradley-terry", "qlora"} <= set(data["tags"])
    text = card.text
    assert "`logits[:, 1]`" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("someone/llama3-bt-rm")' in text
    assert "reward = model(**inputs).logits[:, 1]" in text
    assert "| learning rate | 0.0001 |" in text and "| optimizer steps | 200 |" in text
    assert "| accuracy | 0.6912 |" in text and "| accuracy 95% CI | [0.66, 0.72] |" in text
    assert "dequantized before merging (the exact route)" in text


def test_loading_code_in_the_card_runs_on_a_merged_checkpoint(trained, tmp_path):
    from bt_peft import merge_and_save, score
    from bt_peft.evaluation.loading import load_for_scoring

    _, adapter_dir = trained
    merged = merge_and_save(adapter_dir, tmp_path / "merged", dtype=torch.float32, from_4bit=True)
    write_model_card(merged, base_model=str(adapter_dir), repo_id=str(merged))
    code = ModelCard.load(merged / "README.md").text.split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(code, namespace)
    text = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast."
    model, tokenizer = load_for_scoring(merged)
    assert namespace["reward"].item() == pytest.approx(score(model, tokenizer, [text])[0].item(), abs=1e-5)


def test_local_paths_stay_out_of_the_metadata_and_the_default_merge_is_noted(tmp_path):
    local_base = tmp_path / "base"
    local_base.mkdir()
    card = ModelCard.load(write_model_card(tmp_path, base_model=str(local_base), dataset="bt_peft:demo", from_4bit=False))
    assert "base_model" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert f"fine-tuned from `{local_base}` on `bt_peft:demo`" in card.text
    assert "NF4 quantization error" in card.text and "## Evaluation" not in card.text


def test_write_model_card_needs_an_existing_directory(tmp_path):
    with pytest.raises(NotADirectoryError, match="missing"):
        write_model_card(tmp_path / "missing", base_model="a/b")


def test_upload_files_leave_out_hidden_staging_directories(tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", ".merged.tmp-1/model.safetensors", ".DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    write_model_card(tmp_path, base_model="a/b")
    assert upload_files(tmp_path) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_push_to_hub_checks_the_folder_then_calls_the_hub(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="README.md"):
        push_to_hub(tmp_path, "someone/rm")
    write_model_card(tmp_path, base_model="a/b")
    with pytest.raises(ValueError, match="owner/name"):
        push_to_hub(tmp_path, "not a repo id")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, read at import
    with pytest.raises(OfflineModeIsEnabled, match="repos/create"):
        push_to_hub(tmp_path, "someone/rm", token="hf_test")


def test_evaluation_metrics_rows_of_an_evaluation_result(tmp_path):
    from bt_peft.evaluation import pair_metrics
    from bt_peft.export.model_card import evaluation_metrics

    results = pair_metrics([1.0, 2.0, 0.5, 0.0], [0.0, 1.0, 1.5, 0.0], [10, 20, 30, 40])
    rows = evaluation_metrics(results, "dev: ")
    low, high = results["accuracy_ci"]
    assert rows == {"dev: pairs": 4, "dev: accuracy": 0.5, "dev: accuracy 95% CI (Wilson)": f"[{low:.4g}, {high:.4g}]",
                    "dev: ties": 1, "dev: margin mean / median": "0.25 / 0.5"}
    card = ModelCard.load(write_model_card(tmp_path, base_model="a/b", metrics=rows)).text
    assert "| dev: accuracy | 0.5 |" in card and "| dev: ties | 1 |" in card


def test_training_settings_report_the_dropout_that_runs(tmp_path):
    """LoRA dropout runs at its configured rate (the trainer keeps it under TRL's `disable_dropout`); the base
    model's dropout is what `disable_dropout` says."""
    from trl import ModelConfig, RewardConfig

    from bt_peft.export.model_card import training_settings

    model_args = ModelConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05)
    for disable, base in ((True, "off (disable_dropout)"), (False, "as its config says")):
        args = RewardConfig(output_dir=str(tmp_path), bf16=False, disable_dropout=disable)
        settings = training_settings(args, model_args, 3)
        assert settings["LoRA r / alpha / dropout"] == "16 / 32 / 0.05"
        assert settings["dropout of the base model"] == base
