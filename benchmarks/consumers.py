"""How each consumer of a reward model reads the demo model: the consumer table of issue 13, re-measured.

    python benchmarks/consumers.py                     # the demo's merged checkpoint and adapter (bash scripts/demo.sh)
    python benchmarks/consumers.py --pairs 20          # a quicker look

For the 2-label checkpoint (`outputs/demo-smollm2/merged`) and its scalar export (`bt-peft export`, written to a
temporary directory), each consumer's own rule is applied to the first `--pairs` demo dev pairs and compared with
`bt_peft.score` (the reward as trained): pairwise accuracy (a tie counts as wrong), ties, and the largest difference
from the trained reward. The rules:

    TRL GRPO reward_funcs=<path>   TRL's own `GRPOTrainer._calculate_rewards` (its loading with num_labels=1, its
                                   tokenization: add_special_tokens=False, right padding; logits[:, 0])
    loaded object, logits[:, 0]    `AutoModelForSequenceClassification.from_pretrained(path)`, logits[:, 0]
    RewardBench list rule          `logits.tolist()` of chosen and rejected compared as Python lists (row 0 first)
    softmax (vLLM, TEI, pipeline)  `pipeline("text-classification")` defaults: softmax for 2 labels (the "reward"
                                   label's probability), none for a regression head (the raw score)
    OpenRLHF PPO / serve_rm        OpenRLHF is not installed here: its `get_llm_for_sequence_regression` rebuilt from
                                   its source (`AutoModel` backbone + `nn.Linear(hidden, 1, bias=False)` named by
                                   `value_head_prefix`, the reward at the last attention-mask token, `(r - mean) / std`
                                   when `normalize_reward`, undone here), fed as its PPO feeds it: the sequence as
                                   generated, ending with the eos when the generation finished, no special tokens
                                   added, left padding
    PEFT two-step reload           `PeftModel.from_pretrained(AutoModelForBradleyTerry.from_pretrained(base), adapter)`
                                   on right- and left-padded batches of the adapter's tokenizer

Prints a Markdown table. Runs on a CPU in minutes (SmolLM2-135M).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline
from trl import GRPOConfig, GRPOTrainer

from bt_peft import AutoModelForBradleyTerry, export_reward_model, load_for_scoring, score
from bt_peft.data import load_split
from bt_peft.embedded import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    wins, ties = (chosen > rejected).sum().item(), (chosen == rejected).sum().item()
    return f"{wins / len(chosen):.1%}" + (f" ({ties} ties)" if ties else "")


def batched(texts: list[str], forward, batch_size: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([forward(texts[start:start + batch_size]) for start in range(0, len(texts), batch_size)])


def plain_logits(path: Path, texts: list[str], **load_kwargs) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **load_kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return batched(texts, lambda batch: model(**tokenizer(batch, padding=True, return_tensors="pt")).logits)


def trl_grpo_rewards(path: Path, prompts: list[str], completions: list[str], scratch: Path) -> torch.Tensor:
    args = GRPOConfig(output_dir=str(scratch / "grpo"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, bf16=False, use_cpu=True, report_to=[])
    trainer = GRPOTrainer(model=resolve_model("bt_peft:smollm2"), reward_funcs=str(path), args=args,
                          train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts[:2]]))
    rewards = []
    for start in range(0, len(prompts), 16):
        batch_prompts, batch_completions = prompts[start:start + 16], completions[start:start + 16]
        rewards.append(trainer._calculate_rewards([{"prompt": p} for p in batch_prompts], batch_prompts,
                                                  batch_completions, [[0]] * len(batch_prompts))[:, 0].cpu())
    return torch.cat(rewards)


def pipeline_scores(path: Path, texts: list[str]) -> torch.Tensor:
    classify = pipeline("text-classification", model=str(path), dtype=torch.float32)
    return torch.tensor([next(entry["score"] for entry in output if entry["label"] == "reward")
                         for output in classify(texts, top_k=None)])


def openrlhf_style_rewards(path: Path, queries: list[str]) -> torch.Tensor:
    """OpenRLHF's reward model as `get_llm_for_sequence_regression(path, "reward", value_head_prefix=...)` builds it
    and `serve_rm` (OpenRLHF 3c3be62, 2026-08) reads a query: as sent, `add_special_tokens=False`, left padding, the
    reward at the last attention-mask position, `(r - mean) / std` with `normalize_reward` in config.json. Raises as
    OpenRLHF's loading would on a 2-row head. OpenRLHF's PPO sends `decode(prompt_ids + generated_ids,
    skip_special_tokens=False)`: a finished generation ends with the policy's eos."""
    config = json.loads((path / "config.json").read_text())
    prefix = config.get("value_head_prefix", "score")
    backbone = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with safe_open(path / "model.safetensors", framework="pt") as weights:
        head_weight = weights.get_tensor(f"{prefix}.weight")
    head = torch.nn.Linear(backbone.config.hidden_size, 1, bias=False)
    head.load_state_dict({"weight": head_weight})  # a (2, hidden) head does not fit: size mismatch
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")

    def forward(batch: list[str]) -> torch.Tensor:
        inputs = tokenizer(batch, padding=True, add_special_tokens=False, return_tensors="pt")
        mask = inputs["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        values = head(backbone(inputs["input_ids"], attention_mask=mask, position_ids=position_ids).last_hidden_state).squeeze(-1)
        last = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
        reward = values.gather(1, last).squeeze(1)
        return (reward - config["mean"]) / config["std"] if config.get("normalize_reward") else reward

    return batched(queries, forward)


def peft_two_step_rewards(adapter: Path, texts: list[str], padding_side: str) -> tuple[torch.Tensor | None, str]:
    from peft import PeftConfig

    base = AutoModelForBradleyTerry.from_pretrained(PeftConfig.from_pretrained(adapter).base_model_name_or_path,
                                                    dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter, padding_side=padding_side)

    def forward(batch: list[str]) -> torch.Tensor:
        return model(**tokenizer(batch, padding=True, return_tensors="pt")).logits[:, 1]

    try:
        return batched(texts, forward), "as loaded"
    except ValueError as error:
        model.config.pad_token_id = tokenizer.pad_token_id
        return batched(texts, forward), f"refused ({str(error)[:60]}…); after setting the pad id"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--merged", type=Path, default=ROOT / "outputs" / "demo-smollm2" / "merged")
    parser.add_argument("--adapter", type=Path, default=ROOT / "outputs" / "demo-smollm2" / "adapter")
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args()

    pairs = load_split("bt_peft:demo", "dev", args.pairs)
    prompts = [row["prompt"] for row in pairs] * 2
    completions = [row["chosen"] for row in pairs] + [row["rejected"] for row in pairs]
    texts = [p + c for p, c in zip(prompts, completions)]
    n = len(pairs)
    model, tokenizer = load_for_scoring(args.merged)
    trained = score(model, tokenizer, texts)
    rows = [("bt_peft.score (the reward as trained)", "merged", accuracy(trained[:n], trained[n:]), "0")]

    def measure(consumer: str, form: str, rewards) -> None:
        try:
            rewards = rewards()
        except Exception as error:  # a consumer that refuses the checkpoint: its error is the result
            rows.append((consumer, form, f"refuses: {type(error).__name__}: {str(error).splitlines()[0][:90]}", "-"))
            return
        difference = (rewards - trained).abs().max().item() if rewards.shape == trained.shape else float("nan")
        rows.append((consumer, form, accuracy(rewards[:n], rewards[n:]), f"{difference:.1e}"))

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        scalar = export_reward_model(args.merged, scratch / "scalar", normalization=(trained.mean().item(), trained.std().item()))
        print(f"scalar export: {scalar} (OpenRLHF mean {trained.mean().item():.4f}, std {trained.std().item():.4f})")
        for form, path in (("2-label merged", args.merged), ("scalar export", scalar)):
            measure("TRL GRPO reward_funcs=<path>", form, lambda: trl_grpo_rewards(path, prompts, completions, scratch))
            measure("loaded object, logits[:, 0]", form, lambda: plain_logits(path, texts)[:, 0])
            logits = plain_logits(path, texts)
            as_lists = [c > r for c, r in zip(logits[:n].tolist(), logits[n:].tolist())]
            rows.append(("RewardBench list rule", form, f"{sum(as_lists) / n:.1%}", "-"))
            measure("pipeline default (softmax / none)", form, lambda: pipeline_scores(path, texts))
            if form == "scalar export":
                statistics = json.loads((path / "config.json").read_text())
                for what, queries in (("a finished generation (ends with eos)", [text + tokenizer.eos_token for text in texts]),
                                      ("a generation cut at max length (no eos)", texts)):
                    measure(f"OpenRLHF PPO / serve_rm: {what}", form,
                            lambda: openrlhf_style_rewards(path, queries) * statistics["std"] + statistics["mean"])
            else:
                measure("OpenRLHF PPO / serve_rm", form, lambda: openrlhf_style_rewards(path, texts))
        # The two-step reload puts the adapter on the unquantized base: its reference is bt_peft.score of the same.
        reference = score(AutoModelForBradleyTerry.from_pretrained(args.adapter, dtype=torch.float32),
                          AutoTokenizer.from_pretrained(args.adapter), texts)
        rows.append(("AutoModelForBradleyTerry.from_pretrained(adapter), unquantized base", "adapter",
                     accuracy(reference[:n], reference[n:]), f"{(reference - trained).abs().max().item():.1e} (NF4 gap)"))
        for side in ("right", "left"):
            rewards, how = peft_two_step_rewards(args.adapter, texts, side)
            rows.append((f"PEFT two-step reload, {side} padding", f"adapter: {how}", accuracy(rewards[:n], rewards[n:]),
                         f"{(rewards - reference).abs().max().item():.1e} (vs the row above)"))
    print(f"\n{n} demo dev pairs; max |diff| is against bt_peft.score of the merged checkpoint unless said\n")
    print("| consumer | checkpoint | accuracy | max abs diff |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
