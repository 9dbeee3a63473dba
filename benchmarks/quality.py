"""Does it learn? Held-out accuracy and loss of bt-peft's default run against stock TRL, side by side.

    python benchmarks/quality.py                                   # every arm, the settings below (~1.5 h on 2 cores)
    python benchmarks/quality.py --arms default,stock --max-train 200 --max-length 256   # a quicker look

Every arm trains SmolLM2-135M-Instruct (the embedded checkpoint) in 4-bit NF4 with LoRA r16/alpha 32/dropout 0.05 on
q/k/v/o and the score head, on the HH-RLHF harmless-base train split (`--hh-dir`, default
`../shared/data/hh-rlhf-harmless-base`), with the same batch size, learning rate, epochs, max_length, seed and
compute dtype (bf16 by default), each in its own subprocess:

    stock        `trl.RewardTrainer` + peft on a num_labels=1 model, with TRL's own defaults and data processing
                 (the tokenizer as it ships, EOS appended, pairs over max_length dropped): what users run today
    random-head  bt-peft's defaults, but the new head initialised as transformers does (normal, std
                 initializer_range): bt-peft before its head started at zero
    default      `load_qlora_model` + `BradleyTerryRewardTrainer`, the library's defaults
    recipe       the library's defaults plus the schedule of the HH recipe (`recipes/configs/llama3_8b_hh.yaml`:
                 epochs, learning rate, scheduler, warm-up), which spends bt-peft's speed on more training

Gradient checkpointing is off in every arm (it changes time, not results). All arms are evaluated on the same dev
pairs: the first pairs of the dev split that fit `max_length` tokens per side with an EOS appended (so neither
TRL's filter nor bt-peft's truncation changes them), a multiple of the eval batch size (so the batch means TRL logs
are exact means over pairs). Printed: dev accuracy with its 95 % Wilson interval, dev loss before and after, train loss
at the end, training time and pairs/s. Written to `--output-dir`: `arms/<arm>.json` as each arm finishes,
`quality.json` and `train_loss.png` (the train-loss curves of every arm, smoothed over `--smooth` logged points).
An interrupted run resumes: an arm whose `arms/<arm>.json` was written with the same settings is not run again.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, TrainerCallback

from hh_data import SHARED_HH_DIR

RECIPE_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "llama3_8b_hh.yaml"
RECIPE_FIELDS = ("num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps")
ARMS = {
    "stock": "stock trl.RewardTrainer + peft",
    "random-head": "bt-peft, random head (before)",
    "default": "bt-peft defaults",
    "recipe": "bt-peft + HH recipe schedule",
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05)


class Timer(TrainerCallback):
    """Wall time of `train()` alone (from the start of the first step to the end of the last)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


def dev_pairs(options: argparse.Namespace, tokenizer) -> "datasets.Dataset":
    """The common evaluation pairs (see the module docstring)."""
    from bt_peft import load_preference_file

    dev = load_preference_file(Path(options.hh_dir) / "dev.jsonl")
    fits = [i for i, row in enumerate(dev) if max(len(tokenizer(row[side] + tokenizer.eos_token)["input_ids"])
                                                  for side in ("chosen", "rejected")) <= options.max_length]
    count = min(options.max_eval, len(fits)) // options.eval_batch_size * options.eval_batch_size
    return dev.select(fits[:count])


def settings_for(arm: str, options: argparse.Namespace) -> dict:
    """The `RewardConfig` fields of an arm: shared by all, plus the recipe's schedule for the recipe arm."""
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=options.batch_size,
                    per_device_eval_batch_size=options.eval_batch_size, max_length=options.max_length,
                    num_train_epochs=options.epochs, learning_rate=options.learning_rate,
                    bf16=options.dtype == "bfloat16", gradient_checkpointing=False, report_to=[], save_strategy="no",
                    logging_steps=options.logging_steps, seed=options.seed, disable_tqdm=True,
                    use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    if arm == "recipe":
        recipe = yaml.safe_load(RECIPE_CONFIG.read_text())
        settings.update({name: recipe[name] for name in RECIPE_FIELDS})
    return settings


def trainer_for(arm: str, options: argparse.Namespace):
    """(trainer, dev pairs) of one arm."""
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from bt_peft import BradleyTerryRewardTrainer, load_preference_file, load_qlora_model
    from bt_peft.embedded import smollm2_checkpoint
    from bt_peft.modeling import head_of
    from bt_peft.quantization import nf4_config
    from bt_peft.training.qlora import lora_targets

    path = smollm2_checkpoint()
    dtype = getattr(torch, options.dtype)
    train = load_preference_file(Path(options.hh_dir) / "train.jsonl")
    if options.max_train:
        train = train.select(range(min(options.max_train, len(train))))
    args = RewardConfig(**settings_for(arm, options))
    dev = dev_pairs(options, AutoTokenizer.from_pretrained(path))
    torch.manual_seed(options.seed)  # the head's initialisation, where it is random
    if arm == "stock":
        device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, quantization_config=nf4_config(dtype), dtype=dtype, device_map=device_map
        )
        lora = LoraConfig(**LORA, target_modules=lora_targets(model.config), task_type="SEQ_CLS", modules_to_save=["score"])
        return RewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                             processing_class=AutoTokenizer.from_pretrained(path), peft_config=lora), dev
    model, tokenizer = load_qlora_model(path, compute_dtype=dtype, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                                        lora_dropout=LORA["lora_dropout"], gradient_checkpointing=False)
    if arm == "random-head":
        head = getattr(model.get_base_model(), head_of(model.get_base_model()))
        torch.nn.init.normal_(head.modules_to_save["default"].weight, std=model.config.initializer_range)
    return BradleyTerryRewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                     processing_class=tokenizer), dev


def run_arm(arm: str, options: argparse.Namespace) -> dict:
    """Train and evaluate one arm in this process."""
    trainer, dev = trainer_for(arm, options)
    timer = Timer()
    trainer.add_callback(timer)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    pairs_seen = trainer.state.global_step * options.batch_size
    return {
        "arm": arm,
        "settings": {name: getattr(trainer.args, name) for name in RECIPE_FIELDS},
        "train_pairs": len(trainer.train_dataset),
        "steps": trainer.state.global_step,
        "train_seconds": timer.seconds,
        "pairs_per_s": pairs_seen / timer.seconds,
        "dev_pairs": len(dev),
        "dev_loss_before": before["eval_loss"],
        "dev_accuracy_before": before["eval_accuracy"],
        "dev_loss": after["eval_loss"],
        "dev_accuracy": after["eval_accuracy"],
        "train_loss": losses,
    }


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to `window - 1` values before it."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def plot(results: list[dict], batch_size: int, smooth: int, path: Path) -> None:
    """Train-loss curves (moving average over `smooth` logged points) against pairs seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for result in results:
        steps, losses = zip(*result["train_loss"])
        axes.plot([step * batch_size for step in steps], moving_average(list(losses), smooth),
                  label=f"{ARMS[result['arm']]}: dev acc {result['dev_accuracy']:.3f}")
    axes.axhline(0.6931, color="grey", linestyle=":", label="ln 2 (chance)")
    axes.set_xlabel("training pairs seen")
    axes.set_ylabel(f"train loss (moving average of {smooth} logs)")
    axes.set_title("Bradley-Terry training on HH-RLHF harmless-base, SmolLM2-135M 4-bit")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="stock,random-head,default,recipe", help="comma-separated, of " + ", ".join(ARMS))
    parser.add_argument("--hh-dir", default=str(SHARED_HH_DIR), help="HH-RLHF directory with train.jsonl and dev.jsonl")
    parser.add_argument("--max-train", type=int, default=None, help="use the first N train pairs (default: all 1,112)")
    parser.add_argument("--max-eval", type=int, default=200, help="at most N dev pairs (rounded down to the batch)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--smooth", type=int, default=4, help="moving-average window of the plotted train loss")
    parser.add_argument("--output-dir", default="outputs/quality")
    parser.add_argument("--run-arm", choices=list(ARMS), help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args(argv)
    arms = options.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if options.run_arm:
        print(json.dumps(run_arm(options.run_arm, options)))
        return

    from bt_peft.evaluation.metrics import accuracy_interval

    arguments = sys.argv[1:] if argv is None else argv
    output = Path(options.output_dir)
    (output / "arms").mkdir(parents=True, exist_ok=True)
    settings = {name: value for name, value in vars(options).items() if name not in ("arms", "smooth", "output_dir")}
    results = []
    for arm in arms:
        saved = output / "arms" / f"{arm}.json"
        if saved.exists() and json.loads(saved.read_text())["options"] == settings:
            results.append(json.loads(saved.read_text())["result"])
            print(f"arm {arm}: reusing {saved}", flush=True)
            continue
        child = subprocess.run([sys.executable, __file__, *arguments, "--run-arm", arm], capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{child.stderr[-4000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        saved.write_text(json.dumps({"options": settings, "result": results[-1]}, indent=2))
        print(f"arm {arm} done: dev accuracy {results[-1]['dev_accuracy']:.3f}", flush=True)
    for result in results:
        correct = round(result["dev_accuracy"] * result["dev_pairs"])
        result["dev_accuracy_interval"] = accuracy_interval(correct, result["dev_pairs"])

    (output / "quality.json").write_text(json.dumps({"options": vars(options), "results": results}, indent=2))
    plot(results, options.batch_size, options.smooth, output / "train_loss.png")
    print(f"\nSmolLM2-135M 4-bit, {options.dtype}, batch {options.batch_size}, lr {options.learning_rate}, "
          f"{options.epochs} epoch(s), max_length {options.max_length}, seed {options.seed}; "
          f"dev: {results[0]['dev_pairs']} pairs")
    print(f"{'arm':<34}{'epochs':>7}{'lr':>9}{'dev acc':>9}{'95% interval':>15}{'dev loss':>10}"
          f"{'(before)':>10}{'train loss':>11}{'train s':>9}{'pairs/s':>9}")
    for result in results:
        low, high = result["dev_accuracy_interval"]
        last = moving_average([loss for _, loss in result["train_loss"]], options.smooth)[-1]
        print(f"{ARMS[result['arm']]:<34}{result['settings']['num_train_epochs']:>7}{result['settings']['learning_rate']:>9.0e}"
              f"{result['dev_accuracy']:>9.3f}{f'{low:.3f}-{high:.3f}':>15}{result['dev_loss']:>10.4f}"
              f"{result['dev_loss_before']:>10.4f}{last:>11.4f}{result['train_seconds']:>9.0f}{result['pairs_per_s']:>9.2f}")
    print(f"written: {output / 'quality.json'}, {output / 'train_loss.png'}")


if __name__ == "__main__":
    main()
