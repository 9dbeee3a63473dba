import dataclasses
import logging

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
from trl import RewardConfig
from trl.trainer.reward_trainer import DataCollatorForPreference

from bt_peft import AutoModelForBradleyTerry, BradleyTerryRewardConfig, BradleyTerryRewardTrainer, bt_reward, load_qlora_model
from bt_peft.data import prepare_preference_dataset
from bt_peft.loss import bradley_terry_loss
from bt_peft.training.packing import (
    CHOSEN, PADDING, PROMPT, REJECTED, PackedPairCollator, first_fit_decreasing, packed_rewards,
    packing_unsupported_reason, shared_prefix_length,
)
from conftest import PAIRS, build_tokenizer, fp32_args, preference_rows, tiny_llama_config

TOLERANCE = 1e-5
SHAPES = dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)


def save_causal_lm(path, model_class, config_class, **overrides):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model_class(config_class(**(SHAPES | {"vocab_size": len(tokenizer)} | overrides))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tiny_llama_dir, tmp_path_factory):
    """Local causal-LM checkpoints by name; Mistral's sliding window (6) is shorter than the test pairs."""
    from bt_peft.embedded import smollm2_checkpoint

    return {
        "llama": tiny_llama_dir,
        "mistral": save_causal_lm(tmp_path_factory.mktemp("mistral"), MistralForCausalLM, MistralConfig, sliding_window=6),
        "qwen2": save_causal_lm(tmp_path_factory.mktemp("qwen2"), Qwen2ForCausalLM, Qwen2Config),
        "smollm2": smollm2_checkpoint(),
    }


def load(path, compute_dtype=torch.float32, **kwargs):
    """A QLoRA reward model (fp32 unless told) in train mode (gradient checkpointing on), its LoRA B and head made
    non-zero (as after some training) so that rewards differ and every adapter weight gets a gradient."""
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(path, compute_dtype=compute_dtype, lora_dropout=0.0, **kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(0, 0.05)
    model.train()
    return model, tokenizer


def examples(tokenizer, hh_dir=None, max_length=None):
    """Prepared pairs: explicit and implicit prompts, a reply that is a prefix of the other, and (given `hh_dir`)
    HH-RLHF pairs truncated to `max_length`, so their shared beginning may be cut."""
    prefix_pair = {"prompt": "Human: hi Assistant:", "chosen": " Sure.", "rejected": " Sure. No, go away."}
    explicit = preference_rows(1)[:2] + [prefix_pair]
    datasets = [(explicit, None), ([{"chosen": p + c, "rejected": p + r} for p, c, r in PAIRS[2:]], None)]
    if hh_dir is not None:
        datasets.append((Dataset.from_json(str(hh_dir / "dev.jsonl")).select(range(3)).to_list(), max_length))
    prepared = [prepare_preference_dataset(Dataset.from_list(rows), tokenizer, length)[0] for rows, length in datasets]
    return [pair for dataset in prepared for pair in dataset.to_list()]


def standard_rewards(model, tokenizer, pairs, padding_side):
    """Rewards from the ordinary padded forward (TRL's layout: chosen sequences, then rejected ones)."""
    tokenizer.padding_side = padding_side
    ids = [pair["chosen_ids"] for pair in pairs] + [pair["rejected_ids"] for pair in pairs]
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
    return bt_reward(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits).chunk(2)


def rewards_and_gradients(model, rewards_of):
    model.zero_grad()
    chosen, rejected = rewards_of()
    bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.1).backward()
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
    return torch.cat([chosen, rejected]).detach(), gradients


def assert_packed_equals_standard(model, tokenizer, pairs, padding_side="right", **collator_options):
    collator = PackedPairCollator(tokenizer.pad_token_id, **collator_options)
    expected, expected_grads = rewards_and_gradients(model, lambda: standard_rewards(model, tokenizer, pairs, padding_side))
    actual, grads = rewards_and_gradients(model, lambda: packed_rewards(model, collator(pairs)))
    assert (actual - expected).abs().max().item() <= TOLERANCE
    assert any("lora_A" in name for name in grads) and any("score" in name for name in grads)
    for name, gradient in grads.items():
        assert expected_grads[name].abs().max() > 0, name
        scale = max(1.0, expected_grads[name].abs().max().item())  # SmolLM2's head gradients reach ~3
        assert (gradient - expected_grads[name]).abs().max().item() <= TOLERANCE * scale, name


def test_shared_prefix_keeps_a_token_in_each_reply():
    assert shared_prefix_length([0, 5, 6, 7], [0, 5, 6, 8, 9]) == 3
    assert shared_prefix_length([0, 5, 6], [0, 5, 6, 8]) == 2  # one reply is a prefix of the other
    assert shared_prefix_length([7, 5], [8, 5]) == 0  # truncation cut their common beginning


def test_first_fit_decreasing_packs_under_the_budget():
    assert first_fit_decreasing([3, 5, 2, 4], capacity=7) == [[1, 2], [3, 0]]
    assert first_fit_decreasing([9, 2], capacity=7) == [[0], [1]]  # a pair over the budget gets its own row


def test_collator_layout():
    examples = [{"chosen_ids": [0, 5, 6, 7], "rejected_ids": [0, 5, 8], "margin": 0.5},
                {"chosen_ids": [0, 9], "rejected_ids": [0, 4, 4], "margin": 0.0}]
    batch = PackedPairCollator(pad_token_id=2, max_tokens_per_row=10)(examples)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7, 8, 0, 9, 4, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 1, 2]]
    assert batch["pair_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]
    assert batch["part_ids"].tolist() == [[PROMPT, PROMPT, CHOSEN, CHOSEN, REJECTED, PROMPT, CHOSEN, REJECTED, REJECTED]]
    assert batch["chosen_index"].tolist() == [3, 6] and batch["rejected_index"].tolist() == [4, 8]
    assert batch["margin"].tolist() == [0.5, 0.0]

    one_per_row = PackedPairCollator(pad_token_id=2, padding_free=False)(examples)
    assert one_per_row["input_ids"].tolist() == [[0, 5, 6, 7, 8], [0, 9, 4, 4, 2]]
    assert one_per_row["pair_ids"][1].tolist() == [0, 0, 0, 0, PADDING]
    assert one_per_row["chosen_index"].tolist() == [3, 6] and one_per_row["rejected_index"].tolist() == [4, 8]

    side_by_side = PackedPairCollator(pad_token_id=2, shared_prefix=False, padding_free=False)(examples[:1])
    assert side_by_side["input_ids"].tolist() == [[0, 5, 6, 7, 0, 5, 8]]
    assert side_by_side["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    with pytest.raises(ValueError, match="empty"):
        PackedPairCollator(pad_token_id=2)([{"chosen_ids": [], "rejected_ids": [1]}])


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("options", [{}, {"padding_free": False}, {"shared_prefix": False}, {"max_tokens_per_row": 40}])
def test_packed_equals_standard_on_tiny_llama(checkpoints, hh_dir, padding_side, options):
    model, tokenizer = load(checkpoints["llama"])
    pairs = examples(tokenizer, hh_dir, max_length=24)
    if options == {}:
        assert len(PackedPairCollator(tokenizer.pad_token_id)(pairs)["input_ids"]) < len(pairs)  # really padding-free
    assert_packed_equals_standard(model, tokenizer, pairs, padding_side, **options)


@pytest.mark.parametrize("name, padding_side", [("mistral", "right"), ("mistral", "left"), ("qwen2", "left")])
def test_packed_equals_standard_on_mistral_and_qwen2(checkpoints, hh_dir, name, padding_side):
    model, tokenizer = load(checkpoints[name])
    assert_packed_equals_standard(model, tokenizer, examples(tokenizer, hh_dir, max_length=24), padding_side)


def test_packed_equals_standard_on_smollm2(checkpoints):
    model, tokenizer = load(checkpoints["smollm2"], gradient_checkpointing=False)  # 4-bit on a CPU is slow
    assert_packed_equals_standard(model, tokenizer, examples(tokenizer)[2:], "left")


def test_packed_equals_standard_with_pad_equal_to_eos(checkpoints, hh_dir):
    model, tokenizer = load(checkpoints["llama"])
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.eos_token_id
    assert_packed_equals_standard(model, tokenizer, examples(tokenizer, hh_dir, max_length=24), "right")


def test_packed_equals_standard_with_eager_attention(checkpoints):
    model, tokenizer = load(checkpoints["llama"], attn_implementation="eager")
    assert_packed_equals_standard(model, tokenizer, examples(tokenizer), "left")


def test_flex_attention_forward_equals_standard(checkpoints):
    """FlexAttention (BlockMask) runs forward only on a CPU (torch has no CPU backward for it)."""
    model, tokenizer = load(checkpoints["llama"], attn_implementation="flex_attention")
    reference, _ = load(checkpoints["llama"], attn_implementation="sdpa")
    pairs = examples(tokenizer)
    with torch.no_grad():
        expected = torch.cat(standard_rewards(reference, tokenizer, pairs, "right"))
        actual = torch.cat(packed_rewards(model, PackedPairCollator(tokenizer.pad_token_id)(pairs)))
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_rejected_reply_never_sees_the_chosen_reply(checkpoints):
    model, tokenizer = load(checkpoints["llama"])
    model.eval()
    pairs = examples(tokenizer)
    collator = PackedPairCollator(tokenizer.pad_token_id, max_tokens_per_row=1000)
    altered = [dict(pair) for pair in pairs]
    prefix = shared_prefix_length(pairs[0]["chosen_ids"], pairs[0]["rejected_ids"])
    altered[0]["chosen_ids"] = pairs[0]["chosen_ids"][:prefix] + [7] * (len(pairs[0]["chosen_ids"]) - prefix)
    batch, altered_batch = collator(pairs), collator(altered)
    assert len(batch["input_ids"]) == 1  # every pair in one row
    with torch.no_grad():
        chosen, rejected = packed_rewards(model, batch)
        altered_chosen, altered_rejected = packed_rewards(model, altered_batch)
    assert (altered_chosen[0] - chosen[0]).abs() > 1e-4  # the chosen reply changed ...
    assert torch.equal(altered_rejected, rejected) and torch.equal(altered_chosen[1:], chosen[1:])  # ... nothing else


def test_encoders_and_mixed_attention_layers_fall_back(tmp_path, caplog):
    tokenizer = build_tokenizer()
    bert = AutoModelForBradleyTerry.from_config(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=64))
    with caplog.at_level(logging.WARNING, logger="bt_peft"):
        trainer = BradleyTerryRewardTrainer(model=bert, args=fp32_args(tmp_path, max_steps=1), processing_class=tokenizer,
                                            train_dataset=Dataset.from_list(preference_rows()))
        trainer.train()
    messages = [record.getMessage() for record in caplog.records if "packing" in record.getMessage()]
    assert len(messages) == 1 and "BertForSequenceClassification" in messages[0]
    assert isinstance(trainer.data_collator, DataCollatorForPreference) and trainer.state.global_step == 1

    mixed = Qwen2Config(**(SHAPES | {"vocab_size": 64}), use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert "mixes attention layer types" in packing_unsupported_reason(AutoModelForBradleyTerry.from_config(mixed))
    llama = AutoModelForBradleyTerry.from_config(tiny_llama_config(64))
    assert packing_unsupported_reason(llama) is None


def train(path, output_dir, **switches):
    """Three fp32 training steps from the same seed; `switches` make the arguments a `BradleyTerryRewardConfig`."""
    model, tokenizer = load(path)
    # SGD, not Adam: Adam divides each gradient element by its own running size, so an element that is ~0 (float
    # rounding noise, which differs between any two batch layouts) becomes a full-size update; SGD keeps the
    # comparison of the two layouts' weights linear in their gradients, which agree to ~1e-7.
    args = fp32_args(output_dir, max_steps=3, per_device_train_batch_size=5, max_length=24, optim="sgd", learning_rate=0.05)
    if switches:
        settings = {field.name: getattr(args, field.name) for field in dataclasses.fields(RewardConfig) if field.init}
        args = BradleyTerryRewardConfig(**settings, **switches)
    trainer = BradleyTerryRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples(tokenizer) * 2),
                                        eval_dataset=Dataset.from_list(examples(tokenizer)), processing_class=tokenizer)
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters() if param.requires_grad}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    adapter = {name: param.detach().clone() for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert all(not torch.equal(before[name], adapter[name]) for name in adapter)
    return trainer, losses + [trainer.evaluate()["eval_loss"]], adapter


def test_training_and_evaluation_with_packing_on_and_off_agree(checkpoints, tmp_path):
    packed, packed_losses, packed_adapter = train(checkpoints["llama"], tmp_path / "packed")
    standard, losses, adapter = train(checkpoints["llama"], tmp_path / "standard", packing=False, padding_free=False)
    assert isinstance(packed.data_collator, PackedPairCollator)
    assert packed.data_collator.shared_prefix and packed.data_collator.padding_free
    assert isinstance(standard.data_collator, DataCollatorForPreference)
    assert len(losses) == 4 and max(abs(a - b) for a, b in zip(packed_losses, losses)) <= TOLERANCE
    for name, value in adapter.items():
        assert (packed_adapter[name] - value).abs().max().item() <= TOLERANCE, name
    assert packed.state.log_history[0]["num_tokens"] < standard.state.log_history[0]["num_tokens"]

    side_by_side, _, _ = train(checkpoints["llama"], tmp_path / "padding-free", packing=False)
    assert isinstance(side_by_side.data_collator, PackedPairCollator) and not side_by_side.data_collator.shared_prefix
