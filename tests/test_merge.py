import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bt_peft import AutoModelForBradleyTerry, bt_reward, merge_and_save, score
from conftest import preference_rows
from test_streaming_merge import random_adapter, random_base, weights

TEXTS = [row["prompt"] + row[side] for row in preference_rows(1) for side in ("chosen", "rejected")]
TEXTS += ["Human: hi</s>", "Human: how do I bake bread? Assistant: Go away.</s>"]  # texts that end in eos


def plain_rewards(directory, texts, padding_side="right") -> torch.Tensor:
    """What any tool gets: plain transformers classes and `tokenizer(text)` with the saved tokenizer."""
    model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side=padding_side)
    with torch.no_grad():
        return bt_reward(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)


@pytest.fixture(scope="module")
def merged(trained, tmp_path_factory):
    _, adapter = trained
    root = tmp_path_factory.mktemp("merged")
    return {
        "fp32": merge_and_save(adapter, root / "fp32", dtype=torch.float32),
        "exact": merge_and_save(adapter, root / "exact", dtype=torch.float32, from_4bit=True),
        "bf16": merge_and_save(adapter, root / "bf16"),
    }


def test_merged_checkpoint_is_a_plain_two_label_safetensors_checkpoint(merged, trained):
    trainer, _ = trained
    directory = merged["fp32"]
    config = json.loads((directory / "config.json").read_text())
    assert config["id2label"] == {"0": "unused", "1": "reward"}
    assert config["pad_token_id"] == trainer.processing_class.pad_token_id != trainer.processing_class.eos_token_id
    assert list(directory.glob("*.safetensors")) and not list(directory.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == config["pad_token_id"]
    assert AutoModelForSequenceClassification.from_pretrained(directory).config.num_labels == 2
    assert "logits[:, 1]" in (directory / "README.md").read_text()  # the model card
    assert [path.name for path in directory.parent.iterdir() if path.name.startswith(".")] == []  # no staging left


def test_merged_equals_adapter_on_the_same_dtype_base(merged, trained, tiny_llama_dir):
    _, adapter = trained
    base = AutoModelForBradleyTerry.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model.config.pad_token_id = tokenizer.pad_token_id
    expected = score(model, tokenizer, TEXTS)
    assert (plain_rewards(merged["fp32"], TEXTS) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_what_you_train_is_what_you_serve(merged, trained, padding_side):
    """The exact merge served by plain transformers gives the rewards of the trained 4-bit model, as read by the
    trainer and by `score`, texts ending in eos included."""
    trainer, _ = trained
    served = plain_rewards(merged["exact"], TEXTS, padding_side)
    scored = score(trainer.model, trainer.processing_class, TEXTS)
    rows = [{"prompt": "", "chosen": text, "rejected": "x"} for text in TEXTS]
    prepared = trainer.prepare_dataset(trainer.train_dataset.from_list(rows), "serve")
    batch = trainer.data_collator(list(prepared))  # packed or padded, whichever the trainer trains with
    with torch.no_grad():
        in_training = bt_reward(trainer.compute_loss(trainer.model, batch, return_outputs=True)[1].logits)
    assert (served - scored).abs().max() <= 1e-5
    assert (served - in_training[: len(TEXTS)]).abs().max() <= 1e-5


def test_eos_at_the_end_of_a_text_is_where_the_reward_is_read(merged):
    with_eos, without_eos = plain_rewards(merged["exact"], ["Human: hi</s>", "Human: hi"])
    assert with_eos != pytest.approx(without_eos.item(), abs=1e-6)


def test_default_merge_uses_the_original_base_not_the_nf4_one(merged, trained):
    """The default route merges into the original (not NF4) base weights, so it moves away from the trained 4-bit
    model by the NF4 gap (0.36 in reward here, rewards up to 1.6), while the exact route stays within 1e-5."""
    trainer, _ = trained
    scored = score(trainer.model, trainer.processing_class, TEXTS)
    assert (plain_rewards(merged["fp32"], TEXTS) - scored).abs().max() > 1e-2
    assert (plain_rewards(merged["exact"], TEXTS) - scored).abs().max() <= 1e-5


def test_bf16_merge_is_written_in_bf16(merged):
    config = json.loads((merged["bf16"] / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (plain_rewards(merged["bf16"], TEXTS) - plain_rewards(merged["fp32"], TEXTS)).abs().max() < 0.05


def test_what_you_train_is_what_you_serve_on_smollm2_and_hh_data(tmp_path, hh_dir):
    """The same guarantee on a real pretrained model (SmolLM2-135M, real tokenizer, pad `<|endoftext|>` while eos is
    `<|im_end|>`), trained in 4-bit on real HH-RLHF pairs, with texts ending in eos (which bt-peft reads, as it trains
    on them, completed the way the chat template closes a turn: plain transformers is given that form)."""
    from datasets import Dataset

    from bt_peft import BradleyTerryRewardTrainer, load_qlora_model
    from bt_peft.embedded import smollm2_checkpoint
    from bt_peft.tokenizer import complete_turn
    from conftest import fp32_args

    model, tokenizer = load_qlora_model(smollm2_checkpoint(), compute_dtype=torch.float32, gradient_checkpointing=False)
    rows = Dataset.from_json(str(hh_dir / "train.jsonl")).select(range(8))
    trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path, max_steps=2, per_device_train_batch_size=2,
                                        max_length=96, gradient_checkpointing=False, learning_rate=1e-3),
                                        train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    merged = merge_and_save(tmp_path / "adapter", tmp_path / "merged", dtype=torch.float32, from_4bit=True)
    texts = [row["chosen"][-300:] for row in rows.select(range(3))] + ["\n\nHuman: hi\n\nAssistant: Hello!<|im_end|>"]
    trainer.model.eval()
    for padding_side in ("right", "left"):
        served = plain_rewards(merged, [complete_turn(tokenizer, text) for text in texts], padding_side)
        assert (served - score(trainer.model, tokenizer, texts)).abs().max() <= 1e-4


def test_a_non_empty_output_dir_is_refused_unless_overwrite(trained, tmp_path):
    _, adapter = trained
    target = tmp_path / "merged"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        merge_and_save(adapter, target, dtype=torch.float32)
    assert [path.name for path in target.iterdir()] == ["notes.txt"]
    merge_and_save(adapter, target, dtype=torch.float32, overwrite=True)
    assert not (target / "notes.txt").exists() and (target / "config.json").is_file()


CHILD_MERGE = (
    "import logging, sys, torch; from bt_peft import merge_and_save; "
    "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s'); "
    "merge_and_save(sys.argv[1], sys.argv[2], dtype=torch.float32, max_shard_size='20KB', overwrite=sys.argv[3] == '1')"
)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """An 8-layer tiny Llama and an adapter: merged in 20 KB shards it writes ~60 shards over a second or more."""
    root = tmp_path_factory.mktemp("many-shards")
    base = random_base(root / "base", hidden_size=128, intermediate_size=256, num_hidden_layers=8)
    return random_adapter(base, root / "adapter")


def kill_merge_midway(adapter, target, overwrite: bool, log) -> None:
    """Run a real merge in a subprocess and SIGKILL it as soon as it reports its first written shard."""
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD_MERGE, str(adapter), str(target), str(int(overwrite))],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
        for line in child.stdout:
            if line.startswith("bt-peft merge: wrote model-00001-of-"):
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait()
    assert child.returncode == -signal.SIGKILL, f"the merge was not killed midway:\n{log.read_text()[-2000:]}"
    (staging,) = target.parent.glob(f".{target.name}.tmp-*")
    assert list(staging.glob("*.safetensors")) and not (staging / "config.json").exists()  # it was halfway


def test_a_killed_merge_leaves_no_target_and_a_new_merge_succeeds(many_shards, tmp_path):
    target = tmp_path / "merged"
    kill_merge_midway(many_shards, target, overwrite=False, log=tmp_path / "child.log")
    assert not target.exists()
    merge_and_save(many_shards, target, dtype=torch.float32, max_shard_size="20KB")
    assert AutoModelForSequenceClassification.from_pretrained(target).config.num_labels == 2


def test_a_killed_overwriting_merge_keeps_the_old_checkpoint(many_shards, tmp_path):
    target = merge_and_save(many_shards, tmp_path / "merged", dtype=torch.float32, max_shard_size="20KB")
    files, before = sorted(path.name for path in target.iterdir()), weights(target)
    kill_merge_midway(many_shards, target, overwrite=True, log=tmp_path / "child.log")
    assert sorted(path.name for path in target.iterdir()) == files
    after = weights(target)
    assert after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in before)
    assert AutoModelForSequenceClassification.from_pretrained(target).config.num_labels == 2
    merge_and_save(many_shards, target, dtype=torch.float32, overwrite=True)
    assert (target / "model.safetensors").is_file() and not (target / "model.safetensors.index.json").exists()
