"""Shared fixtures: a tiny random Llama reward checkpoint with a tokenizer built locally (no downloads)."""

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

if not torch.cuda.is_available():  # deepspeed (the ZeRO-3 test's) otherwise prints its accelerator guess on stdout
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # whenever transformers imports it, in the tests' subprocesses too

HH_DIR = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-base"
"""The HH-RLHF sample shipped with the tests: 100 train and 20 dev raw pairs (its README says how it was cut)."""

CORPUS = [
    "Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast, let it rise, then bake it.",
    "Human: what is the capital of France? Assistant: Paris is the capital of France.",
    "Human: tell me a joke. Assistant: No. Go away, I do not care about you.",
    "Human: how far is the moon? Assistant: About 384,400 kilometres from the Earth on average.",
    "Human: can you help me? Assistant: Sure, I am happy to help. What do you need?",
]
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer: BOS `<s>` prepended, eos `</s>`, no pad token, and an unused special
    `<|endoftext|>` that bt-peft should pick as the pad token."""
    specials = ["<s>", "</s>", "<|endoftext|>", "<unk>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        additional_special_tokens=["<|endoftext|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    settings = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    bos_token_id=0, eos_token_id=1, pad_token_id=None, tie_word_embeddings=False)
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random causal-LM Llama checkpoint with its tokenizer, as a user would download one."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    """The tests' HH-RLHF sample directory (`train.jsonl`, `dev.jsonl`)."""
    assert HH_DIR.is_dir(), f"the tests' HH-RLHF sample is expected at {HH_DIR}"
    return HH_DIR


PAIRS = [
    ("Human: can you help me? Assistant:", " Sure, I am happy to help.", " No. Go away."),
    ("Human: what is the capital of France? Assistant:", " Paris is the capital of France.", " I do not care about you."),
    ("Human: how do I bake bread? Assistant:", " Mix flour, water, salt and yeast, then bake it.", " Go away, I do not care."),
    ("Human: how far is the moon? Assistant:", " About 384,400 kilometres on average.", " No. I do not care about you."),
]


def preference_rows(repeat: int = 4) -> list[dict]:
    """Standard explicit-prompt rows with a learnable preference (helpful vs rude)."""
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS] * repeat


def write_preference_splits(root: Path, rows: list[dict]) -> Path:
    """A data directory `root/data` holding `train.jsonl` and `dev.jsonl`, both `rows` (the recipe's local layout)."""
    data = root / "data"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def fp32_args(output_dir, **overrides):
    """A small, deterministic fp32 RewardConfig for tests."""
    from trl import RewardConfig

    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                    max_steps=4, learning_rate=5e-3, bf16=False, report_to=[], logging_steps=1,
                    save_strategy="no", max_length=64, seed=0, disable_tqdm=True)
    settings.update(overrides)
    return RewardConfig(**settings)


@pytest.fixture(scope="session")
def trained(tiny_llama_dir, tmp_path_factory):
    """A tiny fp32 QLoRA reward model trained a few steps, and its adapter saved with `trainer.save_model`."""
    from datasets import Dataset

    from bt_peft import BradleyTerryRewardTrainer, load_qlora_model

    output = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)  # the new head's initialisation: the same model whichever tests ran first
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)
    trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(output, max_steps=6),
                                        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(output / "adapter"))
    trainer.model.eval()
    return trainer, output / "adapter"


CHAT_CONVERSATIONS = [[{"role": "user", "content": prompt.removeprefix("Human: ").removesuffix(" Assistant:")},
                       {"role": "assistant", "content": reply.strip()}] for prompt, chosen, rejected in PAIRS for reply in (chosen, rejected)]
"""`PAIRS` as 8 two-message conversations (a user prompt, an assistant reply)."""


def openrlhf_query(tokenizer, conversation: list[dict]) -> str:
    """What OpenRLHF 0.11.2's PPO posts for a conversation (`utils/agent.py`): the prompt rendered with
    `add_generation_prompt=True`, then the generated ids, which stop at the eos (a chat model's end-of-turn token),
    decoded with their special tokens: `decode(prompt_ids + generated_ids, skip_special_tokens=False)`."""
    prompt_ids = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    generated_ids = tokenizer(conversation[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer.decode(prompt_ids + generated_ids, skip_special_tokens=False)


@pytest.fixture(scope="session")
def chat_reward_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random 2-label reward checkpoint ("merged", head drawn non-zero) with the tokenizer and chat template of
    the embedded SmolLM2-135M-Instruct (ChatML: a turn closes with `<|im_end|>\\n`, a generation stops at
    `<|im_end|>`), and its scalar export ("scalar")."""
    from bt_peft import AutoModelForBradleyTerry, export_reward_model
    from bt_peft.embedded import EMBEDDED_MODEL, resolve_model
    from bt_peft.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("chat-reward")
    tokenizer = load_tokenizer(resolve_model(EMBEDDED_MODEL))
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForBradleyTerry.from_config(config)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    model.save_pretrained(root / "merged")
    tokenizer.save_pretrained(root / "merged")
    return {"merged": root / "merged", "scalar": export_reward_model(root / "merged", root / "scalar", dtype=torch.float32)}


CORE_TEST_FILES = {
    "test_modeling.py", "test_qlora.py", "test_trainer.py", "test_packing.py", "test_merge.py",
    "test_reward_export.py", "test_scoring.py", "test_serve.py",
}
"""The core subset (training, packing, merge, export, score, serve), marked `core`: `.ci/run` runs it on the oldest
supported versions too (`scripts/test.sh --oldest`, i.e. `pytest -m core`), the whole suite on the newest."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of `CORE_TEST_FILES` `core`; a listed file that does not exist is a usage error, not a
    silently smaller subset."""
    missing = CORE_TEST_FILES - {path.name for path in Path(__file__).parent.glob("test_*.py")}
    if missing:
        raise pytest.UsageError(f"tests/conftest.py CORE_TEST_FILES lists missing files: {', '.join(sorted(missing))}")
    for item in items:
        if item.path.name in CORE_TEST_FILES:
            item.add_marker(pytest.mark.core)
