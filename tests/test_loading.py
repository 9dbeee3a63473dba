import torch
from peft import PeftModel

from bt_peft import load_for_scoring, merge_and_save, score
from conftest import preference_rows

TEXTS = [row["prompt"] + row[side] for row in preference_rows(1) for side in ("chosen", "rejected")]


def test_adapter_directory_loads_the_trained_4bit_model(trained):
    trainer, adapter_dir = trained
    model, tokenizer = load_for_scoring(adapter_dir)
    assert isinstance(model, PeftModel) and not model.training
    assert model.config.pad_token_id == tokenizer.pad_token_id == trainer.processing_class.pad_token_id
    assert torch.equal(score(model, tokenizer, TEXTS), score(trainer.model, trainer.processing_class, TEXTS))


def test_merged_checkpoint_loads_as_a_plain_reward_model(trained, tmp_path):
    trainer, adapter_dir = trained
    merged = merge_and_save(adapter_dir, tmp_path / "merged", dtype=torch.float32, from_4bit=True)
    model, tokenizer = load_for_scoring(merged)
    assert not isinstance(model, PeftModel) and model.config.num_labels == 2 and model.dtype == torch.float32
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    expected = score(trainer.model, trainer.processing_class, TEXTS)
    assert (score(model, tokenizer, TEXTS) - expected).abs().max() <= 1e-5


def test_causal_lm_checkpoint_is_an_untrained_baseline_with_a_distinct_pad(tiny_llama_dir):
    model, tokenizer = load_for_scoring(tiny_llama_dir, compute_dtype=torch.bfloat16, allow_new_head=True)
    assert model.config.num_labels == 2 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.score.weight.dtype == torch.float32  # the head stays in fp32, as in training
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.pad_token_id
    assert score(model, tokenizer, TEXTS).isfinite().all()
