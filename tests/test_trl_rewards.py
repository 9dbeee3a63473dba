"""What TRL's GRPO and RLOO compute with `reward_funcs="<scalar export>"` (issue 13 item 5), through TRL's own reward
method (`_calculate_rewards`: it loads the export with `AutoModelForSequenceClassification(num_labels=1)`, tokenizes
with `add_special_tokens=False`, right padding, the chat template for conversations, and reads `logits[:, 0]`).

Conversations: TRL's rewards equal `bt_peft.score` (the chat-template text is tokenized without extra special tokens
in training too). Plain texts on a tokenizer that adds a BOS: TRL scores the text without its BOS, a stated gap; the
test pins it down exactly (TRL's reward is the reward of the BOS-less token ids)."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from bt_peft import export_reward_model, load_for_scoring, merge_and_save, score, score_ids
from conftest import PAIRS

TRAINERS = {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig)}
PLAIN = [(prompt, reply) for prompt, chosen, rejected in PAIRS for reply in (chosen, rejected)]
CONVERSATIONS = [([{"role": "user", "content": prompt.removeprefix("Human: ").removesuffix(" Assistant:")}],
                  [{"role": "assistant", "content": reply.strip()}]) for prompt, reply in PLAIN]


@pytest.fixture(scope="module")
def reward_model(trained, tmp_path_factory):
    """The scalar export of the trained adapter, and the merged model scored by bt-peft."""
    _, adapter = trained
    root = tmp_path_factory.mktemp("trl-rewards")
    merged = merge_and_save(adapter, root / "merged", dtype=torch.float32)
    return export_reward_model(merged, root / "scalar"), load_for_scoring(merged)


def trl_rewards(kind, policy_dir, reward_dir, prompts, completions, output_dir) -> torch.Tensor:
    trainer_class, config_class = TRAINERS[kind]
    args = config_class(output_dir=str(output_dir), per_device_train_batch_size=2, num_generations=2,
                        max_completion_length=4, bf16=False, use_cpu=True, report_to=[], logging_steps=1)
    trainer = trainer_class(model=str(policy_dir), reward_funcs=str(reward_dir), args=args,
                            train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]))
    rewards = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, completions, [[0]] * len(prompts))
    return rewards[:, 0].cpu()


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_trl_rewards_of_conversations_equal_bt_peft_score(kind, reward_model, tiny_llama_dir, tmp_path):
    scalar, (model, tokenizer) = reward_model
    prompts, completions = map(list, zip(*CONVERSATIONS))
    rewards = trl_rewards(kind, tiny_llama_dir, scalar, prompts, completions, tmp_path)
    expected = score(model, tokenizer, [p + c for p, c in zip(prompts, completions)])
    assert expected.std() > 1e-3
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_trl_rewards_of_plain_texts_miss_the_bos_exactly(kind, reward_model, tiny_llama_dir, tmp_path):
    scalar, (model, tokenizer) = reward_model
    prompts, completions = map(list, zip(*PLAIN))
    texts = [p + c for p, c in zip(prompts, completions)]
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # this tokenizer adds a BOS, as Llama-3's does
    rewards = trl_rewards(kind, tiny_llama_dir, scalar, prompts, completions, tmp_path)
    without_bos = score_ids(model, tokenizer, [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts])
    torch.testing.assert_close(rewards, without_bos, atol=1e-5, rtol=0)  # the gap: TRL drops the BOS
    assert (rewards - score(model, tokenizer, texts)).abs().max() > 1e-3  # ... which training had
