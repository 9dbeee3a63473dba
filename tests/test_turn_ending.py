"""A chat model's generation stops at its end-of-turn token (SmolLM2: `<|im_end|>`); training on conversations renders
the chat template, which closes the turn with `<|im_end|>\\n`. `encode` completes such a text the way the template
closes the turn (`bt_peft.tokenizer.complete_turn`), so `score` and `bt-peft serve` read the reward of OpenRLHF's
queries (`decode(prompt_ids + generated_ids, skip_special_tokens=False)`) where training read it; TRL's GRPO renders
conversations with the template and reads there too (its own reward code, on the scalar export)."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from bt_peft import load_for_scoring, score, score_ids
from bt_peft.data import encode
from bt_peft.tokenizer import complete_turn, turn_ending
from conftest import CHAT_CONVERSATIONS as CONVERSATIONS
from conftest import build_tokenizer, openrlhf_query


@pytest.fixture(scope="module")
def chat_model(chat_reward_dirs):
    return load_for_scoring(chat_reward_dirs["merged"])


def test_the_turn_ending_is_read_from_the_chat_template(chat_model):
    _, tokenizer = chat_model
    assert turn_ending(tokenizer) == ("<|im_end|>", "\n")  # ChatML, rendered; not hard-coded
    assert complete_turn(tokenizer, "reply<|im_end|>") == "reply<|im_end|>\n"
    for unchanged in ("reply", "reply<|im_end|>\n", "reply<|endoftext|>"):
        assert complete_turn(tokenizer, unchanged) == unchanged
    plain = build_tokenizer()  # its template closes a turn with `</s>` and nothing after it
    assert turn_ending(plain) == ("</s>", "") and complete_turn(plain, "reply</s>") == "reply</s>"
    plain.chat_template = None
    assert turn_ending(plain) is None and complete_turn(plain, "reply</s>") == "reply</s>"


def test_score_reads_an_openrlhf_query_where_training_read_the_conversation(chat_model):
    model, tokenizer = chat_model
    queries = [openrlhf_query(tokenizer, conversation) for conversation in CONVERSATIONS]
    assert all(query.endswith("<|im_end|>") for query in queries)
    assert [encode(tokenizer, query) for query in queries] == [encode(tokenizer, c) for c in CONVERSATIONS]
    trained = score(model, tokenizer, CONVERSATIONS)
    torch.testing.assert_close(score(model, tokenizer, queries), trained, atol=1e-5, rtol=0)
    as_generated = score_ids(model, tokenizer, [tokenizer(query)["input_ids"] for query in queries])
    assert (as_generated - trained).abs().max() > 1e-3  # read at `<|im_end|>`, not at the template's "\n": another reward


def test_trl_grpo_reads_the_trained_reward_of_conversations(chat_model, chat_reward_dirs, tiny_llama_dir, tmp_path):
    model, tokenizer = chat_model
    prompts, completions = [c[:-1] for c in CONVERSATIONS], [c[-1:] for c in CONVERSATIONS]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
                      bf16=False, use_cpu=True, report_to=[])
    trainer = GRPOTrainer(model=str(tiny_llama_dir), reward_funcs=str(chat_reward_dirs["scalar"]), args=args,
                          train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]))
    rewards = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, completions, [[0]] * len(prompts))
    trained = score(model, tokenizer, CONVERSATIONS)
    assert trained.std() > 1e-3
    torch.testing.assert_close(rewards[:, 0].cpu(), trained, atol=1e-5, rtol=0)
