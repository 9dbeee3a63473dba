"""Training throughput of four batch layouts, side by side, on the same model, data and settings.

    python benchmarks/throughput.py                          # SmolLM2-135M in 4-bit QLoRA, HH-RLHF pairs
    python benchmarks/throughput.py --model tiny --steps 4   # a tiny random Llama (a quick check of the script)
    python benchmarks/throughput.py --profile d              # plus a torch.profiler table of arm (d)

Arms (each in its own subprocess, so peak memory is its own):
    a  stock `trl.RewardTrainer` + peft LoRA on a num_labels=1 4-bit model (the path users take today)
    b  `BradleyTerryRewardTrainer`, packing off (TRL's padded batches)
    c  shared-prefix packing, one pair per row
    d  shared-prefix packing + padding-free rows
All arms train on the same pre-tokenized pairs (raw HH text split into prompt/chosen/rejected with
`bt_peft.data`, tokenized and left-truncated to --max-length once), with the same LoRA targets and rank, batch size,
max_length, seed and steps. Printed per arm: pairs/s (the first step is a warm-up and not timed), tokens computed
(every position of every row, padding included), the padding fraction, peak memory (`torch.cuda.max_memory_allocated`
on a GPU, the process's peak RSS on a CPU) and the speed ratio to arm (a).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import RewardConfig, RewardTrainer

from bt_peft import BradleyTerryRewardConfig, BradleyTerryRewardTrainer, load_qlora_model, prepare_preference_dataset
from bt_peft.data import load_preference_file, to_prompt_and_responses
from bt_peft.embedded import smollm2_checkpoint
from bt_peft.quantization import nf4_config
from bt_peft.training.qlora import lora_targets
from bt_peft.tokenizer import eos_ids_of, load_tokenizer
from hh_data import SHARED_HH_DIR

HH_TRAIN = SHARED_HH_DIR / "train.jsonl"
ARMS = {
    "a": "stock trl.RewardTrainer",
    "b": "bt-peft, packing off",
    "c": "shared-prefix packing",
    "d": "packing + padding-free",
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05)


def model_path(name: str, workdir: Path) -> Path:
    """The SmolLM2 checkpoint, a tiny random Llama with SmolLM2's tokenizer saved under `workdir`, or `name` itself
    when it is a checkpoint directory."""
    if Path(name).is_dir():
        return Path(name)
    checkpoint = smollm2_checkpoint()
    if name == "smollm2":
        return checkpoint
    path = workdir / "tiny-llama"
    if not path.exists():
        tokenizer = load_tokenizer(checkpoint)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def pairs(path: Path, data: str, count: int, max_length: int) -> Dataset:
    """The first `count` HH pairs as (prompt, chosen, rejected) texts, tokenized and truncated as bt-peft does."""
    rows = []
    for row in load_preference_file(data).select(range(count)):
        prompt, chosen, rejected = to_prompt_and_responses(row)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    tokenizer = load_tokenizer(path)
    return prepare_preference_dataset(Dataset.from_list(rows), tokenizer, max_length, "benchmark")[0]


class Meter(TrainerCallback):
    """Step end times, and the tokens of each batch (every position / the real ones) through the collator."""

    def __init__(self, collator):
        self.collator, self.step_ends, self.computed, self.real = collator, [], 0, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.computed += batch["input_ids"].numel()
        self.real += int((batch["pair_ids"] >= 0).sum() if "pair_ids" in batch else batch["attention_mask"].sum())
        return batch

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_ends.append(time.perf_counter())


def trainer_for(arm: str, path: Path, train: Dataset, options: argparse.Namespace):
    dtype = getattr(torch, options.dtype)
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=options.batch_size,
                    max_length=options.max_length, max_steps=options.steps, learning_rate=1e-4,
                    gradient_checkpointing=options.gradient_checkpointing, bf16=dtype == torch.bfloat16,
                    report_to=[], save_strategy="no", logging_strategy="no", seed=0, disable_tqdm=True,
                    use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    if arm == "a":
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, quantization_config=nf4_config(dtype), dtype=dtype, device_map=options.device
        )
        tokenizer = load_tokenizer(path, eos_ids=eos_ids_of(model.config))
        lora = LoraConfig(**LORA, target_modules=lora_targets(model.config), task_type="SEQ_CLS", modules_to_save=["score"])
        return RewardTrainer(model=model, args=RewardConfig(**settings), train_dataset=train,
                             processing_class=tokenizer, peft_config=lora)
    model, tokenizer = load_qlora_model(path, compute_dtype=dtype, gradient_checkpointing=options.gradient_checkpointing,
                                        attn_implementation=options.attn_implementation, lora_r=LORA["r"],
                                        lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"])
    args = BradleyTerryRewardConfig(**settings, packing=arm in "cd", padding_free=arm == "d")
    return BradleyTerryRewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)


def run_arm(arm: str, options: argparse.Namespace) -> dict:
    """Train one arm in this process and measure it."""
    path = model_path(options.model, Path(options.workdir))
    train = pairs(path, options.data, options.batch_size * options.steps, options.max_length)
    torch.manual_seed(0)
    trainer = trainer_for(arm, path, train, options)
    meter = Meter(trainer.data_collator)
    trainer.data_collator = meter
    trainer.add_callback(meter)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if options.profile == arm:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available()
        with profile(activities=activities) as profiler:
            trainer.train()
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)
    else:
        trainer.train()
    timed_steps = len(meter.step_ends) - 1
    seconds = meter.step_ends[-1] - meter.step_ends[0]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {
        "arm": arm,
        "pairs_per_s": timed_steps * options.batch_size / seconds,
        "tokens_computed": meter.computed,
        "padding_fraction": 1 - meter.real / meter.computed,
        "peak_mib": peak,
        "peak_kind": "cuda allocated" if torch.cuda.is_available() else "RSS",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a local checkpoint directory")
    parser.add_argument("--data", default=HH_TRAIN, help="HH-RLHF jsonl (raw chosen/rejected dialogues)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="training steps per arm, the first one a warm-up")
    parser.add_argument("--arms", default="abcd", help="which arms to run, e.g. 'ad'")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype of every arm (arm a needs bfloat16)")
    parser.add_argument("--attn-implementation", default="sdpa", help="for arms b-d (arm a: transformers' default)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on in every arm (default off)")
    parser.add_argument("--profile", choices=list(ARMS), help="print a torch.profiler table of this arm")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bt-peft-throughput"))
    parser.add_argument("--run-arm", choices=list(ARMS), help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args(argv)
    options.device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    if options.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    if "a" in options.arms and options.dtype != "bfloat16":
        parser.error("arm a needs --dtype bfloat16: TRL casts a 4-bit model's adapters and head to bf16")
    if options.run_arm:
        print(json.dumps(run_arm(options.run_arm, options)))
        return

    arguments = sys.argv[1:] if argv is None else argv
    results = []
    for arm in options.arms:
        child = subprocess.run([sys.executable, __file__, *arguments, "--run-arm", arm], capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{child.stderr[-4000:]}")
        if options.profile == arm:
            print(child.stderr[child.stderr.find("-----"):])
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    base = next((result["pairs_per_s"] for result in results if result["arm"] == "a"), None)
    print(f"\nmodel {options.model}, {options.dtype}, batch {options.batch_size} pairs, max_length {options.max_length}, "
          f"{options.steps} steps ({options.steps - 1} timed)")
    print(f"{'arm':<32}{'pairs/s':>9}{'tokens':>10}{'padding':>9}{'peak MiB':>10}{'vs a':>7}")
    for result in results:
        ratio = f"{result['pairs_per_s'] / base:.2f}" if base else "-"
        print(f"{result['arm'] + ' ' + ARMS[result['arm']]:<32}{result['pairs_per_s']:>9.2f}{result['tokens_computed']:>10}"
              f"{result['padding_fraction']:>9.1%}{result['peak_mib']:>10.0f}{ratio:>7}")
    print(f"peak memory: {results[0]['peak_kind']}")


if __name__ == "__main__":
    main()
