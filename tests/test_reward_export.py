"""`export_reward_model` / `bt-peft export` (issue 13 item 2): the scalar form (1 label, `logits[:, 0]` is the reward,
regression, OpenRLHF's keys and mean/std) and the HALOs form (2 labels, row 0 zero), from a merged checkpoint or an
adapter directory, sharded or not."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bt_peft import AutoModelForBradleyTerry, export_reward_model, load_for_scoring, merge_and_save, score
from bt_peft.cli import main as cli
from conftest import preference_rows
from test_merge import TEXTS, plain_rewards


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    _, adapter = trained
    root = tmp_path_factory.mktemp("export")
    merged = merge_and_save(adapter, root / "merged", dtype=torch.float32)
    return {
        "merged": merged,
        "scalar": export_reward_model(merged, root / "scalar"),
        "scalar_from_adapter": export_reward_model(adapter, root / "scalar-adapter", dtype=torch.float32),
        "halos": export_reward_model(merged, root / "halos", format="halos"),
    }


def raw_logits(directory, texts, padding_side="right") -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side=padding_side)
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_scalar_logit_0_is_the_reward(exports, padding_side):
    logits = raw_logits(exports["scalar"], TEXTS, padding_side)
    assert logits.shape == (len(TEXTS), 1)
    torch.testing.assert_close(logits[:, 0], plain_rewards(exports["merged"], TEXTS), atol=1e-6, rtol=0)


def test_scalar_config_carries_what_vllm_pipelines_and_openrlhf_read(exports):
    config = json.loads((exports["scalar"] / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(exports["scalar"])
    assert config["num_labels"] == 1 and config["id2label"] == {"0": "reward"}
    assert config["problem_type"] == "regression"
    assert config["value_head_prefix"] == "score"
    assert config["pad_token_id"] == tokenizer.pad_token_id != config["eos_token_id"]
    assert "mean" not in config and "normalize_reward" not in config  # only with normalization
    weights = load_file(exports["scalar"] / "model.safetensors")
    assert weights["score.weight"].shape == (1, 64)
    assert (exports["scalar"] / "README.md").read_text().count("logits[:, 0]") >= 2


def test_pipeline_returns_the_raw_score_of_the_scalar_export(exports):
    classify = pipeline("text-classification", model=str(exports["scalar"]), dtype=torch.float32)
    rewards = plain_rewards(exports["merged"], TEXTS)
    for output, reward in zip(classify(TEXTS), rewards.tolist()):  # regression: no sigmoid, no softmax
        assert output["label"] == "reward" and output["score"] == pytest.approx(reward, abs=1e-6)


def test_export_of_an_adapter_equals_export_of_its_merge(exports):
    from_adapter = load_file(exports["scalar_from_adapter"] / "model.safetensors")
    from_merge = load_file(exports["scalar"] / "model.safetensors")
    assert from_adapter.keys() == from_merge.keys()
    assert all(torch.equal(from_adapter[key], from_merge[key]) for key in from_merge)
    configs = [json.loads((exports[name] / "config.json").read_text()) for name in ("scalar", "scalar_from_adapter")]
    assert configs[0] == configs[1]


def test_halos_export_zeroes_row_0_of_any_two_label_checkpoint(exports, tmp_path):
    logits = raw_logits(exports["halos"], TEXTS)
    torch.testing.assert_close(logits[:, 1], plain_rewards(exports["merged"], TEXTS), atol=1e-6, rtol=0)
    assert torch.equal(logits[:, 0], torch.zeros(len(TEXTS)))
    foreign = AutoModelForSequenceClassification.from_pretrained(exports["merged"], dtype=torch.float32)
    with torch.no_grad():
        foreign.score.weight[0] = torch.randn(foreign.score.weight.shape[1])  # a 2-label head trained elsewhere
    foreign.save_pretrained(tmp_path / "foreign")
    AutoTokenizer.from_pretrained(exports["merged"]).save_pretrained(tmp_path / "foreign")
    logits = raw_logits(export_reward_model(tmp_path / "foreign", tmp_path / "halos", format="halos"), TEXTS)
    assert torch.equal(logits[:, 0], torch.zeros(len(TEXTS)))
    torch.testing.assert_close(logits[:, 1], plain_rewards(exports["merged"], TEXTS), atol=1e-6, rtol=0)


def test_sharded_export_keeps_the_shards_and_rewrites_the_index(trained, exports, tmp_path):
    _, adapter = trained
    sharded = merge_and_save(adapter, tmp_path / "merged", dtype=torch.float32, max_shard_size="20KB")
    output = export_reward_model(sharded, tmp_path / "scalar")
    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = sorted(path.name for path in output.glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    sizes = sum(tensor.numel() * tensor.element_size() for shard in shards for tensor in load_file(output / shard).values())
    assert index["metadata"]["total_size"] == sizes
    torch.testing.assert_close(raw_logits(output, TEXTS)[:, 0], plain_rewards(exports["merged"], TEXTS), atol=1e-6, rtol=0)


def test_a_scalar_export_imports_back_as_the_same_bradley_terry_model(exports):
    model = AutoModelForBradleyTerry.from_pretrained(exports["scalar"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(exports["scalar"])
    torch.testing.assert_close(score(model, tokenizer, TEXTS), plain_rewards(exports["merged"], TEXTS), atol=1e-6, rtol=0)


def test_cli_export_normalize_on_writes_openrlhf_mean_and_std(exports, tmp_path):
    rows = preference_rows(1)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "scalar"
    assert cli(["export", str(exports["merged"]), str(output), "--normalize_on", str(data), "--dtype", "float32"]) == 0
    config = json.loads((output / "config.json").read_text())
    model, tokenizer = load_for_scoring(exports["merged"])
    rewards = score(model, tokenizer, [row["prompt"] + row[side] for side in ("chosen", "rejected") for row in rows]).double()
    assert config["normalize_reward"] is True
    assert config["mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert config["std"] == pytest.approx(rewards.std().item(), abs=1e-6)  # torch's unbiased std, as OpenRLHF
    assert np.isfinite(config["std"]) and config["std"] > 0


def test_bad_requests_are_refused_with_the_reason(exports, tmp_path):
    with pytest.raises(ValueError, match="format must be one of scalar, halos"):
        export_reward_model(exports["merged"], tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="1-label head; expected a 2-label"):
        export_reward_model(exports["scalar"], tmp_path / "y")
    with pytest.raises(FileExistsError, match="not empty"):
        export_reward_model(exports["merged"], exports["halos"], format="halos")
    assert cli(["export", str(exports["scalar"]), str(tmp_path / "z")]) == 1
