import pytest
import torch

from bt_peft import bt_reward, score, score_ids
from bt_peft.data import encode
from conftest import preference_rows

TEXTS = [row["prompt"] + row[side] for row in preference_rows(1) for side in ("chosen", "rejected")] + ["Human: hi"]


def alone(model, tokenizer, content) -> float:
    """Reward of one sequence, no padding at all."""
    with torch.no_grad():
        return bt_reward(model(input_ids=torch.tensor([encode(tokenizer, content)])).logits).item()


def test_batched_scores_equal_unpadded_single_forwards(trained):
    trainer, _ = trained
    rewards = score(trainer.model, trainer.processing_class, TEXTS, batch_size=3)
    expected = torch.tensor([alone(trainer.model, trainer.processing_class, text) for text in TEXTS])
    assert rewards.dtype == torch.float32 and rewards.shape == (len(TEXTS),)
    assert torch.allclose(rewards, expected, atol=1e-5)


def test_input_order_is_kept(trained):
    trainer, _ = trained
    rewards = score(trainer.model, trainer.processing_class, TEXTS, batch_size=2)
    reversed_rewards = score(trainer.model, trainer.processing_class, TEXTS[::-1], batch_size=2)
    assert torch.allclose(rewards, reversed_rewards.flip(0), atol=1e-6)


def test_left_and_right_padding_give_the_same_rewards(trained):
    trainer, _ = trained
    tokenizer = trainer.processing_class
    right = score(trainer.model, tokenizer, TEXTS, batch_size=4)
    tokenizer.padding_side = "left"
    try:
        left = score(trainer.model, tokenizer, TEXTS, batch_size=4)
    finally:
        tokenizer.padding_side = "right"
    assert torch.allclose(left, right, atol=1e-5)


def test_conversations_are_scored_through_the_chat_template(trained):
    trainer, _ = trained
    conversation = [{"role": "user", "content": "can you help me?"}, {"role": "assistant", "content": "Sure."}]
    rewards = score(trainer.model, trainer.processing_class, [conversation, TEXTS[0]])
    assert rewards[0].item() == pytest.approx(alone(trainer.model, trainer.processing_class, conversation), abs=1e-5)


def test_max_length_cuts_from_the_left_keeping_bos(trained):
    trainer, _ = trained
    tokenizer = trainer.processing_class
    ids = encode(tokenizer, TEXTS[0])
    kept = ids[:1] + ids[-7:]
    with torch.no_grad():
        expected = bt_reward(trainer.model(input_ids=torch.tensor([kept])).logits).item()
    assert score(trainer.model, tokenizer, [TEXTS[0]], max_length=8)[0].item() == pytest.approx(expected, abs=1e-5)


def test_scores_match_the_trainer_rewards(trained):
    trainer, _ = trained
    rows = preference_rows(1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])  # packed or padded, as trained
    with torch.no_grad():
        in_training = bt_reward(trainer.compute_loss(trainer.model, batch, return_outputs=True)[1].logits)
    texts = [row["prompt"] + row["chosen"] for row in rows] + [row["prompt"] + row["rejected"] for row in rows]
    assert torch.allclose(score(trainer.model, trainer.processing_class, texts), in_training, atol=1e-5)


def test_mismatched_pad_ids_are_refused(trained):
    trainer, _ = trained
    model = trainer.model
    pad = model.config.pad_token_id
    model.config.pad_token_id = trainer.processing_class.eos_token_id
    try:
        with pytest.raises(ValueError, match="pad"):
            score(model, trainer.processing_class, TEXTS)
    finally:
        model.config.pad_token_id = pad


def test_training_mode_is_restored(trained):
    trainer, _ = trained
    trainer.model.train()
    score(trainer.model, trainer.processing_class, TEXTS[:2])
    assert trainer.model.training
    trainer.model.eval()


def test_score_ids_is_the_loop_behind_score(trained):
    trainer, _ = trained
    tokenizer = trainer.processing_class
    ids = [encode(tokenizer, text) for text in TEXTS]
    assert torch.equal(score_ids(trainer.model, tokenizer, ids, batch_size=3), score(trainer.model, tokenizer, TEXTS, batch_size=3))
    with pytest.raises(ValueError, match="batch_size"):
        score_ids(trainer.model, tokenizer, ids, batch_size=0)


def test_progress_bar_is_optional(trained, capsys):
    trainer, _ = trained
    score(trainer.model, trainer.processing_class, TEXTS, batch_size=4)
    assert "scoring" not in capsys.readouterr().err
    score(trainer.model, trainer.processing_class, TEXTS, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "scoring: 100%" in err and "3/3" in err  # 9 texts in batches of 4


def test_scoring_builds_no_kv_cache(trained):
    trainer, _ = trained
    config = trainer.model.config
    config.use_cache, was = True, config.use_cache  # as the Llama/Mistral/Qwen presets set it (training turns it off)
    outputs = []
    hook = trainer.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        score(trainer.model, trainer.processing_class, TEXTS, batch_size=4)
    finally:
        hook.remove()
        config.use_cache = was
    cache_fields = [name for name in ("cache", "past_key_values") if hasattr(outputs[0], name)]  # 5.24+ / 5.17 name
    assert len(outputs) == 3 and cache_fields
    assert all(getattr(output, name) is None for output in outputs for name in cache_fields)
