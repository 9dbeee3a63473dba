"""The library's defaults learn: a toy preference, held-out pairs, a stated accuracy within a stated number of steps.

The toy mimics what made the default run stall on real data (issue 14): the final hidden states of a pretrained LM
are large (SmolLM2-135M: norm ~50), so a head initialised at random projects each text's last tokens to a random
reward gap (std ~0.7 on SmolLM2) that Adam at lr 1e-4 needs ~200 steps to unlearn. Here the replies end in random
words (noise for a random head), while the preference is in how the reply starts ("Sure," against "No. Go away,").
With the head starting at zero, 20 steps reach >= 95 % held-out accuracy; with a random head (bt-peft before the
fix) the same run reached 70-80 % on two of three seeds.
"""

import math
import random

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from bt_peft import BradleyTerryRewardTrainer, load_qlora_model

from conftest import build_tokenizer, fp32_args, tiny_llama_config

WORDS = "flour water salt yeast bread moon earth paris france capital joke help kilometres average rise bake".split()
FINAL_NORM_SCALE = 8.0
"""Weight of the tiny model's final RMSNorm: hidden states of norm ~64, like a pretrained LM's (not ~8)."""


def noisy_pairs(count: int, seed: int) -> list[dict]:
    """Helpful-vs-rude pairs whose prompts and reply endings are random words."""
    draw = random.Random(seed)

    def words() -> str:
        return " ".join(draw.choice(WORDS) for _ in range(draw.randint(2, 5)))

    return [{"prompt": f"Human: {words()}? Assistant:", "chosen": f" Sure, {words()}.", "rejected": f" No. Go away, {words()}."}
            for _ in range(count)]


def test_default_settings_learn_a_noisy_toy_preference(tmp_path):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    causal_lm = LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
    with torch.no_grad():
        causal_lm.model.norm.weight.fill_(FINAL_NORM_SCALE)
    causal_lm.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(tmp_path / "base", compute_dtype=torch.float32, gradient_checkpointing=False)
    steps, batch = 20, 8
    args = fp32_args(tmp_path / "run", max_steps=steps, per_device_train_batch_size=batch, per_device_eval_batch_size=32,
                     learning_rate=1e-4, logging_steps=steps)  # TRL's default learning rate
    trainer = BradleyTerryRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(noisy_pairs(steps * batch, 1)),
                                        eval_dataset=Dataset.from_list(noisy_pairs(64, 2)), processing_class=tokenizer)
    before = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6), "a new head: every reward 0"
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_accuracy"] >= 0.95, after
    assert after["eval_loss"] < math.log(2) - 0.02, after
