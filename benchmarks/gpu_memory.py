"""Peak GPU memory and speed of QLoRA Bradley-Terry training of a Llama-3-8B-shaped model, beside `plan_memory`.

    python benchmarks/gpu_memory.py                      # 8B shape, pairs of 1,024 and 2,048 tokens, batch 1
    python benchmarks/gpu_memory.py --layouts padded     # one batch layout only (default: packed and padded)
    python benchmarks/gpu_memory.py --lengths 512 1024 --batch-size 2 --output results.json
    python benchmarks/gpu_memory.py --tiny               # the same code on a tiny shape, on the CPU (a check)

Builds a model with the shapes of the `llama-3-8b` preset and random bf16 weights (nothing is downloaded), saves
it as safetensors shards with a small word-level tokenizer, loads it with `load_qlora_model` (NF4, double quant,
LoRA r16 on q/k/v/o, gradient checkpointing), trains a few steps with `BradleyTerryRewardTrainer` on synthetic
pre-tokenized pairs (a shared prompt of half the length, the chosen reply filling `pair_length`, the rejected
one 8 tokens shorter so the batch is padded) and prints, per pair length and batch layout, the peak of
`torch.cuda.max_memory_allocated`, pairs/s after the first step, and `plan_memory`'s `peak_allocated` for the same
layout.

Needs for the 8B shape: an NVIDIA GPU with CUDA (8 GB is the goal: <= 6.0 GiB at 1,024 tokens, <= 7.5 GiB at
2,048), about 20 GB of host RAM and 16 GB of free disk under --workdir (the bf16 checkpoint). `--tiny` runs on a
CPU in seconds and reports no VRAM figure.

Batch layouts, each trained and planned alike: `packed` (the trainer's default: a pair is one sequence prompt |
chosen | rejected, `packing=True, padding_free=True`; the plan `packing=True`) and `padded` (TRL's two padded
sequences per pair, `packing=False, padding_free=False`; the plan `packing=False`). The plans of the two differ by
4-7 % for 8B: planning one layout and training the other would blur the +-10 % verdict.
"""

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, TrainerCallback
from bt_peft import BradleyTerryRewardConfig, BradleyTerryRewardTrainer, load_qlora_model, plan_memory
from bt_peft.training.planning import resolve_config

LAYOUTS = {"packed": True, "padded": False}
"""Batch layouts by name: the `packing` (and `padding_free`) of training and the `packing` of the plan."""
GOALS_GIB = {1024: 6.0, 2048: 7.5}
"""Peak VRAM goals for the 8B shape at batch 1 (an 8 GB card)."""
PROMPT_FRACTION = 0.5
REJECTED_SHORTER_BY = 8
TOKENIZER_WORDS = 1000
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1024, max_position_embeddings=512, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)


def benchmark_config(tiny: bool) -> LlamaConfig:
    """The Llama-3-8B preset's config, or a 2-layer 64-wide Llama for `--tiny`."""
    return LlamaConfig(**TINY) if tiny else resolve_config("llama-3-8b")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `TOKENIZER_WORDS` words and specials `<s>` (0), `</s>` (1), `<|endoftext|>` (2,
    bt-peft's pad token); the synthetic pairs are token ids, so only its ids and pad token matter."""
    specials = ["<s>", "</s>", "<|endoftext|>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(TOKENIZER_WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=["<|endoftext|>"])


def save_random_checkpoint(config: LlamaConfig, directory: Path) -> Path:
    """Write a causal-LM checkpoint with random bf16 weights (normal, std 0.02; norms 1) and the word tokenizer.

    The model is built on the meta device and materialised once on the CPU in bf16 (16 GB for 8B), then saved in
    2 GB safetensors shards. Returns `directory`.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(directory, max_shard_size="2GB")
    word_tokenizer().save_pretrained(directory)
    del model
    gc.collect()
    return directory


def synthetic_pairs(count: int, pair_length: int, vocab_size: int, seed: int = 0) -> Dataset:
    """`count` pre-tokenized pairs: BOS and a shared prompt of `PROMPT_FRACTION * pair_length` tokens; the chosen
    sequence is `pair_length` tokens, the rejected one `REJECTED_SHORTER_BY` shorter (the batch is padded)."""
    rng = random.Random(seed)
    prompt_length = int(PROMPT_FRACTION * pair_length)

    def words(n: int) -> list[int]:
        return [rng.randrange(4, vocab_size) for _ in range(n)]

    rows = []
    for _ in range(count):
        prompt = [0] + words(prompt_length - 1)
        rows.append({"chosen_ids": prompt + words(pair_length - prompt_length),
                     "rejected_ids": prompt + words(pair_length - prompt_length - REJECTED_SHORTER_BY)})
    return Dataset.from_list(rows)


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def run_length(model, tokenizer, pair_length: int, batch_size: int, steps: int, output_dir: Path, cuda: bool,
               packing: bool) -> dict:
    """Train `steps` steps at one pair length in one batch layout (`packing`: shared-prefix packing and padding-free
    rows, else TRL's padded pairs); returns the measured peak (GiB, `None` on CPU), pairs/s after the first step and
    the last training loss."""
    args = BradleyTerryRewardConfig(output_dir=str(output_dir), per_device_train_batch_size=batch_size,
                                    max_steps=steps, max_length=pair_length, learning_rate=1e-4, bf16=cuda,
                                    use_cpu=not cuda, activation_checkpointing=True,
                                    activation_checkpointing_kwargs={"use_reentrant": False}, packing=packing,
                                    padding_free=packing, logging_steps=1, save_strategy="no", report_to=[],
                                    disable_tqdm=True, seed=0)
    timer = StepTimer()
    trainer = BradleyTerryRewardTrainer(model=model, args=args, processing_class=tokenizer, callbacks=[timer],
                                        train_dataset=synthetic_pairs(batch_size * steps, pair_length, len(tokenizer)))
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak from here on includes the weights already loaded
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    pairs_per_second = batch_size * (len(timer.times) - 1) / (timer.times[-1] - timer.times[0])
    return {"peak_gib": peak, "pairs_per_second": pairs_per_second, "final_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="8B shape: needs CUDA, ~20 GB host RAM, 16 GB disk. --tiny: CPU check.")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="pair lengths (default 1024 2048; tiny: 64 128)")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per step (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per length (default 4)")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS),
                        help="batch layouts, each trained and planned alike (default: packed padded)")
    parser.add_argument("--tiny", action="store_true", help="tiny Llama shape on the CPU: checks the code path")
    parser.add_argument("--workdir", type=Path, default=None, help="where the random checkpoint is written (temp dir)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not args.tiny and not cuda:
        print("error: the 8B benchmark needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False); "
              "run with --tiny to check the code path on the CPU", file=sys.stderr)
        return 2
    if args.tiny:
        cuda = False
    lengths = args.lengths or ([64, 128] if args.tiny else [1024, 2048])
    if args.steps < 2 or args.batch_size < 1 or min(lengths) <= 2 * REJECTED_SHORTER_BY:
        parser.error(f"need --steps >= 2 (pairs/s is timed after the first), --batch-size >= 1 and lengths > "
                     f"{2 * REJECTED_SHORTER_BY}")
    config = benchmark_config(args.tiny)
    compute_dtype = torch.bfloat16 if cuda else torch.float32

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bt-peft-gpu-memory-") as work:
        work = Path(work)
        checkpoint = save_random_checkpoint(config, work / "checkpoint")
        results = []
        for length in lengths:
            for layout in args.layouts:  # a fresh model per run: no optimizer state or autocast wrapper carried over
                model, tokenizer = load_qlora_model(checkpoint, compute_dtype=compute_dtype, attn_implementation="sdpa",
                                                    device_map={"": 0} if cuda else {"": "cpu"})
                measured = run_length(model, tokenizer, length, args.batch_size, args.steps,
                                      work / f"run-{length}-{layout}", cuda, LAYOUTS[layout])
                del model
                gc.collect()  # the trainer held in reference cycles lets go of the model only here
                plan = plan_memory(config, batch_size=args.batch_size, pair_length=length, packing=LAYOUTS[layout],
                                   prompt_fraction=PROMPT_FRACTION, compute_dtype=compute_dtype)
                results.append({"pair_length": length, "layout": layout, "batch_size": args.batch_size, **measured,
                                "plan_peak_gib": plan.peak_allocated / 2**30, "plan_total_gib": plan.total / 2**30,
                                "goal_gib": None if args.tiny else GOALS_GIB.get(length)})

    device = torch.cuda.get_device_name(0) if cuda else "CPU (no VRAM measured)"
    print(f"\nbt-peft GPU memory benchmark: {'tiny Llama' if args.tiny else 'Llama-3-8B shape'}, {device}")
    print(f"{'pair length':>11} {'layout':>7} {'batch':>5} {'peak GiB':>9} {'plan GiB':>9} {'goal GiB':>9} {'pairs/s':>8} "
          f"{'loss':>7}")
    for r in results:
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        goal = "-" if r["goal_gib"] is None else f"{r['goal_gib']:.1f}"
        print(f"{r['pair_length']:>11,} {r['layout']:>7} {r['batch_size']:>5} {peak:>9} {r['plan_peak_gib']:>9.3f} {goal:>9} "
              f"{r['pairs_per_second']:>8.2f} {r['final_loss']:>7.3f}")
    if args.output:
        args.output.write_text(json.dumps({"device": device, "tiny": args.tiny, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
