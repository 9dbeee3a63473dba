"""Host RAM of the whole recipe by phase, on a random Llama of about 1 B parameters on the CPU.

    python benchmarks/host_ram.py                          # 1.07 B parameters, 3 steps: ~15 min on 2 busy cores
    python benchmarks/host_ram.py --layers 2 --hidden 256  # a small model: checks the script in a minute

It builds a random Llama causal LM from a config (the embedded SmolLM2 tokenizer, 49,152 tokens), saves it as
bf16 safetensors in a temporary directory (in a subprocess, so that building it costs this process nothing), then runs
the recipe (`bt_peft.recipe.main`, which `recipes/qlora_llama3.py` runs) in this process: load in 4-bit, train a
few steps (evaluating before and after), save the adapter, score the check pairs, merge (the exact NF4 route in bf16,
as `llama3_8b_hh.yaml`), check the merge, write the card and the scalar export. A thread samples the RSS every 20 ms;
the phases are marked by wrapping the public functions and trainer methods the recipe and its finisher call. It
prints, per phase, the RSS at its start, its peak, and how much the peak exceeds the RSS at the end of training, also
as a multiple of the model's bf16 size (goal: at most 0.4 for every phase after training), and the Llama-3-8B
extrapolation.
"""

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

LLAMA3_8B_PARAMETERS = 8.03e9
COLAB_HOST_GB = 12.7
GOAL = 0.4

BUILD = """
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from bt_peft.embedded import smollm2_checkpoint
path, hidden, layers, intermediate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                     num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(hidden // 256, 1),
                     max_position_embeddings=2048, tie_word_embeddings=True,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
model = LlamaForCausalLM(config)
model.save_pretrained(path)
tokenizer.save_pretrained(path)
print(sum(p.numel() for p in model.parameters()))
"""


class RssSampler(threading.Thread):
    """Samples this process's RSS every `interval` seconds; `mark(phase)` starts a phase, whose start RSS, peak RSS
    and end RSS (the start of the next mark) are kept in `phases`, in order."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.process, self.interval = psutil.Process(), interval
        self.phases: list[dict] = []
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def rss(self) -> int:
        return self.process.memory_info().rss

    def mark(self, phase: str) -> None:
        now = self.rss()
        with self.lock:
            if self.phases:
                self.phases[-1]["end"] = now
                self.phases[-1]["peak"] = max(self.phases[-1]["peak"], now)
            self.phases.append({"phase": phase, "start": now, "peak": now})

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            now = self.rss()
            with self.lock:
                if self.phases:
                    self.phases[-1]["peak"] = max(self.phases[-1]["peak"], now)


def marked(sampler: RssSampler, phase: str, function, after: str | None = None):
    """`function` marking `phase` when called, and on return `after`, or else the phase it was called in."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        caller = sampler.phases[-1]["phase"] if sampler.phases else "start"
        sampler.mark(phase)
        try:
            return function(*args, **kwargs)
        finally:
            sampler.mark(after or caller)

    return wrapper


def instrument(recipe, finish, sampler: RssSampler) -> None:
    """Mark the phases of `recipe.main` by wrapping what it and `RunFinisher.finish` call, in their own namespaces
    (the modules are unchanged)."""
    recipe.load_qlora_model = marked(sampler, "load", recipe.load_qlora_model, after="data + trainer setup")
    finish.score = marked(sampler, "score trained", finish.score, after="release trained model")
    finish.merge_and_save = marked(sampler, "merge", finish.merge_and_save, after="between")
    finish.compare_with_merged = marked(sampler, "check", finish.compare_with_merged, after="summary")
    finish.write_model_card = marked(sampler, "card", finish.write_model_card, after="between")
    finish.export_reward_model = marked(sampler, "scalar export", finish.export_reward_model, after="end")
    trainer_class = recipe.BradleyTerryRewardTrainer

    class MarkedTrainer(trainer_class):
        train = marked(sampler, "train", trainer_class.train, after="after training")
        evaluate = marked(sampler, "evaluate", trainer_class.evaluate)  # also inside `train` (`eval_on_start`)
        save_model = marked(sampler, "save", trainer_class.save_model, after="between")

    recipe.BradleyTerryRewardTrainer = MarkedTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bt-peft-host-ram-") as root:
        base = Path(root) / "base"
        built = subprocess.run([sys.executable, "-c", BUILD, str(base), str(options.hidden), str(options.layers),
                                str(options.intermediate)], capture_output=True, text=True, check=True)
        parameters = int(built.stdout.split()[-1])
        bf16_bytes = 2 * parameters
        print(f"random Llama: {parameters / 1e9:.3f} B parameters, {bf16_bytes / 1e9:.2f} GB in bf16")

        import torch

        import bt_peft.finish as finish
        import bt_peft.recipe as recipe

        torch.set_num_threads(2)
        sampler = RssSampler()
        instrument(recipe, finish, sampler)
        sampler.start()
        sampler.mark("imports")
        argv = [f"--model_name_or_path={base}", "--dtype=bfloat16", "--dataset_name=bt_peft:demo",
                "--dataset_test_split=dev", "--max_train_samples=8", "--max_eval_samples=4", "--merge_dtype=bfloat16",
                "--merge_from_4bit=true", f"--output_dir={Path(root) / 'out'}", "--use_cpu=true", "--bf16=false",
                f"--max_length={options.max_length}", "--per_device_train_batch_size=2",
                "--per_device_eval_batch_size=4", f"--max_steps={options.steps}", "--report_to=none",
                "--save_strategy=no", "--activation_checkpointing=true", "--logging_steps=1", "--disable_tqdm=true"]
        start = time.perf_counter()
        summary = recipe.main(argv)
        sampler.mark("done")
        sampler.stopped.set()
        seconds = time.perf_counter() - start

    phases = sampler.phases[:-1]
    end_of_training = next(index for index, phase in enumerate(phases) if phase["phase"] == "after training")
    trained = phases[end_of_training]["start"]
    gb = 1e9
    print(f"\nrecipe: {seconds:.0f} s; merge check: {json.dumps(summary.get('merge_check'))}")
    print(f"RSS at the end of training: {trained / gb:.2f} GB\n")
    print("| phase | RSS at start (GB) | peak RSS (GB) | peak - start (GB) | peak - end of training (GB) | / bf16 size |")
    print("|---|---|---|---|---|---|")
    worst, worst_own = 0.0, 0.0
    for index, phase in enumerate(phases):
        added, own = phase["peak"] - trained, phase["peak"] - phase["start"]
        after = index >= end_of_training
        if after:
            worst, worst_own = max(worst, added / bf16_bytes), max(worst_own, own / bf16_bytes)
        print(f"| {phase['phase']}{' *' if after else ''} | {phase['start'] / gb:.2f} | {phase['peak'] / gb:.2f} | "
              f"{own / gb:+.2f} | {added / gb:+.2f} | {added / bf16_bytes:+.2f} |")
    verdict = "met" if worst <= GOAL else "NOT met"
    print(f"\n* after training: the largest addition to the RSS of the end of training is {worst:.2f}x the model's "
          f"bf16 size (goal <= {GOAL}: {verdict}); the largest a phase adds to its own start is {worst_own:.2f}x")
    # On a GPU host the trained model is in GPU memory, so releasing it frees no host RAM: count each phase's own
    # addition too, and extrapolate the larger of the two.
    share = max(worst, worst_own)
    llama = 2 * LLAMA3_8B_PARAMETERS
    print(f"Llama-3-8B (bf16 {llama / gb:.1f} GB): at {share:.2f}x a phase after training adds at most "
          f"{share * llama / gb:.1f} GB to the host RAM of the end of training (Colab: {COLAB_HOST_GB} GB in all)")
    if options.output:
        options.output.write_text(json.dumps({"parameters": parameters, "bf16_bytes": bf16_bytes, "seconds": seconds,
                                              "end_of_training_rss": trained, "phases": phases,
                                              "worst_after_training": worst, "worst_own_phase": worst_own,
                                              "summary": summary}, indent=2, default=str))


if __name__ == "__main__":
    main()
