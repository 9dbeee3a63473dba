"""`bt-peft`: the command line. Subcommands `train`, `eval`, `score`, `merge`, `plan` and `serve`.

    bt-peft train --config recipes/configs/demo_smollm2.yaml --max_steps 20
    bt-peft eval outputs/demo-smollm2/merged bt_peft:demo --compare bt_peft:smollm2 --output_dir eval
    bt-peft score outputs/demo-smollm2/merged texts.jsonl --output rewards.jsonl
    bt-peft merge outputs/demo-smollm2/adapter merged --dtype float32 --from_4bit
    bt-peft plan llama-3-8b --batch_size 4 --pair_length 1024 --gpu_gb 24
    bt-peft serve outputs/demo-smollm2/merged --port 5000

Each subcommand's options are a dataclass parsed by `transformers.HfArgumentParser` (help from the field metadata);
`train` hands its arguments to the recipe's `TrlParser` (`bt_peft.recipe.main`, which `recipes/qlora_llama3.py` runs).
Nothing heavy is imported before a subcommand runs (torch, TRL, peft, matplotlib are imported inside `run_*`), so
`bt-peft --help` and `bt-peft <command> --help` answer at once; `bt-peft train --help` prints `train_help.txt`, the
recipe parser's help written by `scripts/train_help.py` (checked against the live parser by the tests), because
building that parser imports TRL.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from .console import show_logs
from .serving.settings import API_KEY_ENV, ServeSettings

Dtype = Literal["bfloat16", "float32", "float16"]
ScoringDtype = Literal["auto", "bfloat16", "float32", "float16"]
OWN_DTYPE_HELP = ("auto: the model's own, a checkpoint's saved dtype (a bf16 merge stays bf16) or an adapter's training "
                  "compute dtype; or bfloat16, float32, float16 (an adapter directory's 4-bit compute dtype)")
TRAINED_LENGTH_HELP = "default: the max_length the model was trained with (saved with its tokenizer), else no limit"
TRAIN_HELP = Path(__file__).parent / "train_help.txt"


@dataclass
class EvalOptions:
    """Options of `bt-peft eval MODEL DATA`."""

    split: str = field(default="dev", metadata={"help": "split of a data directory (<split>.jsonl), bt_peft:demo or a Hub dataset"})
    max_samples: int | None = field(default=None, metadata={"help": "evaluate the first N pairs only"})
    max_length: int | None = field(default=None, metadata={"help": f"cut longer pairs from the left, as in training; {TRAINED_LENGTH_HELP}"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward"})
    dtype: ScoringDtype = field(default="auto", metadata={"help": OWN_DTYPE_HELP})
    compare: str | None = field(default=None, metadata={"help": "a second model evaluated on the same pairs and plotted side by side; may be a causal LM (e.g. the base: its new head at zero, the untrained baseline)"})
    output_dir: str | None = field(default=None, metadata={"help": "write evaluation.json and the PNG plots there"})


@dataclass
class ScoreOptions:
    """Options of `bt-peft score MODEL INPUT`."""

    output: str | None = field(default=None, metadata={"help": "output JSONL (default: standard output)"})
    max_length: int | None = field(default=None, metadata={"help": f"cut longer texts from the left, as in training; {TRAINED_LENGTH_HELP}"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward"})
    dtype: ScoringDtype = field(default="auto", metadata={"help": OWN_DTYPE_HELP})


@dataclass
class MergeOptions:
    """Options of `bt-peft merge ADAPTER OUTPUT`."""

    dtype: Dtype = field(default="bfloat16", metadata={"help": "dtype of the merged weights (use the training compute dtype with --from_4bit)"})
    from_4bit: bool = field(default=False, metadata={"help": "exact route: merge into the NF4-dequantized base, as trained"})
    base_model: str | None = field(default=None, metadata={"help": "base model (default: the adapter config's base_model_name_or_path)"})
    max_shard_size: str = field(default="5GB", metadata={"help": "safetensors shard size"})
    low_memory: bool = field(default=True, metadata={"help": "streaming merge, one weight at a time (false: whole base in RAM, any architecture)"})
    device: str | None = field(default=None, metadata={"help": "where --from_4bit's NF4 round trip runs: cpu, cuda or cuda:N (default: the GPU if there is one)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT directory"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id (owner/name) to upload the merged checkpoint to"})
    private: bool = field(default=True, metadata={"help": "create the Hub repo private"})


@dataclass
class ExportOptions:
    """Options of `bt-peft export MODEL OUTPUT`."""

    format: str = field(default="scalar", metadata={"help": "scalar: 1 label, logits[:, 0] is the reward (TRL GRPO/RLOO, OpenRLHF, vLLM, TEI); halos: 2 labels, logits[:, 1]", "choices": ["scalar", "halos"]})
    normalize_on: str | None = field(default=None, metadata={"help": "data (as bt-peft eval takes it): write OpenRLHF's reward mean/std over its chosen and rejected texts into config.json"})
    split: str = field(default="dev", metadata={"help": "split of a --normalize_on data directory, bt_peft:demo or Hub dataset"})
    max_samples: int | None = field(default=None, metadata={"help": "use the first N pairs of --normalize_on"})
    max_length: int | None = field(default=None, metadata={"help": f"cut longer --normalize_on pairs from the left, as in training; {TRAINED_LENGTH_HELP}"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward (--normalize_on)"})
    dtype: Dtype = field(default="bfloat16", metadata={"help": "merge dtype of an adapter directory (--normalize_on scores the checkpoint being exported in its own dtype)"})
    from_4bit: bool = field(default=False, metadata={"help": "adapter directory: exact merge route (NF4-dequantized base)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT directory"})


@dataclass
class PlanOptions:
    """Options of `bt-peft plan CONFIG`."""

    batch_size: int = field(default=1, metadata={"help": "pairs per device step (per_device_train_batch_size)"})
    pair_length: int = field(default=1024, metadata={"help": "tokens of one side of a pair, prompt + reply (max_length)"})
    packing: bool = field(default=True, metadata={"help": "a pair is one sequence prompt + chosen + rejected"})
    prompt_fraction: float = field(default=0.5, metadata={"help": "share of pair_length that is prompt (with packing)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "non-reentrant gradient checkpointing"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    compute_dtype: Dtype = field(default="bfloat16", metadata={"help": "4-bit compute dtype"})
    gpu_gb: float | None = field(default=None, metadata={"help": "your GPU's memory in GiB, added to the verdicts (8, 12, 16, 24, 80 GB)"})


def _options(cls: type, namespace: argparse.Namespace):
    """The dataclass `cls` filled from the parsed namespace."""
    return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls)})


def _label(model: str) -> str:
    """Short name of a model for reports and plots: the last path component (a `bt_peft:` name as is)."""
    return Path(model).name or model


def load_eval_data(data: str, split: str, max_samples: int | None):
    """Preference pairs for `eval`: a .jsonl/.json file, a directory of `<split>.jsonl`, `bt_peft:demo` or a Hub
    dataset id. Returns a `datasets.Dataset`, cut to its first `max_samples` rows when set; raises
    `FileNotFoundError` for a path that does not exist."""
    from .data import DEMO_DATA, load_preference_file, load_split
    from .export.model_card import hub_id

    if Path(data).is_file() or Path(data).suffix in (".jsonl", ".json"):
        dataset = load_preference_file(data)
        return dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset
    if data != DEMO_DATA and not Path(data).is_dir() and hub_id(data) is None:
        raise FileNotFoundError(f"data {data!r}: no such file or directory (nor bt_peft:demo or a Hub dataset id)")
    return load_split(data, split, max_samples)


def summary_line(name: str, results: dict) -> str:
    """One line of `evaluate_pairs` results: accuracy with its CI, ties, margins, pairs."""
    low, high = results["accuracy_ci"]
    return (
        f"{name}: accuracy {results['accuracy']:.3f} ({results['confidence']:.0%} CI {low:.3f}-{high:.3f}), "
        f"{results['n_pairs']} pairs, {results['ties']} ties, margin mean {results['margin_mean']:.3f} "
        f"median {results['margin_median']:.3f}"
    )


def run_eval(args: argparse.Namespace) -> int:
    from .atomic import write_json_atomically
    from .evaluation.loading import dtype_named
    from .evaluation.metrics import evaluate_pairs
    from .evaluation.plots import plot_evaluation

    options = _options(EvalOptions, args)
    dataset = load_eval_data(args.data, options.split, options.max_samples)
    models = [args.model] + ([options.compare] if options.compare else [])
    labels = [_label(model) for model in models]
    if len(set(labels)) < len(labels):
        labels = list(models)
    named = {}
    for index, (label, model) in enumerate(zip(labels, models)):
        named[label] = evaluate_pairs(  # only --compare may be a causal LM: the untrained baseline, a new zero head
            model, None, dataset, max_length=options.max_length, batch_size=options.batch_size,
            dtype=dtype_named(options.dtype), allow_new_head=index > 0,
        )
        print(summary_line(label, named[label]))
        for bucket in named[label]["length_buckets"]:
            accuracy = "-" if bucket["accuracy"] is None else f"{bucket['accuracy']:.3f}"
            print(f"  length {bucket['label']:>10} tokens: accuracy {accuracy} ({bucket['count']} pairs)")
    if options.output_dir:
        written = [write_json_atomically(named, Path(options.output_dir) / "evaluation.json")]
        written += plot_evaluation(named, options.output_dir)
        print("wrote " + ", ".join(str(path) for path in written))
    return 0


def read_score_input(path: str) -> list[tuple[dict, object]]:
    """Rows of a `score` input JSONL: `{"text": str}`, `{"messages": [{role, content}, ...]}` or a bare list of
    messages per line (blank lines skipped). Returns `(output row, text or conversation)` pairs; raises `ValueError`
    naming the file and line of a bad row."""
    from .data import content_form

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
        if isinstance(row, list):
            row = {"messages": row}
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object or a list of messages, got {type(row).__name__}")
        try:
            form = content_form("messages", row["messages"]) if "messages" in row else content_form("text", row.get("text"))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if form is None or not row.get(form):
            raise ValueError(f'{where}: expected {{"text": str}} or {{"messages": [{{"role", "content"}}, ...]}}')
        rows.append((row, row[form]))
    if not rows:
        raise ValueError(f"{path}: no rows to score")
    return rows


def run_score(args: argparse.Namespace) -> int:
    from .evaluation.loading import dtype_named, load_for_scoring
    from .evaluation.scoring import score

    options = _options(ScoreOptions, args)
    rows = read_score_input(args.input)
    model, tokenizer = load_for_scoring(args.model, compute_dtype=dtype_named(options.dtype))
    rewards = score(model, tokenizer, [content for _, content in rows], options.batch_size, options.max_length)
    lines = "".join(json.dumps(row | {"reward": reward}) + "\n" for (row, _), reward in zip(rows, rewards.tolist()))
    if options.output:
        Path(options.output).write_text(lines, encoding="utf-8")
        print(f"wrote {len(rows)} rewards to {options.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    import torch
    from peft import PeftConfig

    from .export.merge import merge_and_save
    from .export.model_card import push_to_hub, write_model_card

    options = _options(MergeOptions, args)
    if not (Path(args.adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {args.adapter!r}: no adapter_config.json (expected a trainer.save_model directory)")
    output = merge_and_save(
        args.adapter,
        args.output,
        dtype=getattr(torch, options.dtype),
        base_model_name_or_path=options.base_model,
        from_4bit=options.from_4bit,
        max_shard_size=options.max_shard_size,
        low_memory=options.low_memory,
        overwrite=options.overwrite,
        device=options.device,
    )
    print(f"merged {args.adapter} into {output}")
    if options.push_to_hub:  # the card's loading code names the repo
        base = options.base_model or PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
        write_model_card(output, base_model=base, from_4bit=options.from_4bit, repo_id=options.push_to_hub)
        print(f"pushed: {push_to_hub(output, options.push_to_hub, private=options.private)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from .evaluation.metrics import evaluate_pairs, reward_statistics
    from .export.reward_export import export_reward_model

    options = _options(ExportOptions, args)
    dtype = getattr(torch, options.dtype)
    normalization = None
    if options.normalize_on:
        dataset = load_eval_data(options.normalize_on, options.split, options.max_samples)

        def normalization(checkpoint: Path) -> tuple[float, float]:
            results = evaluate_pairs(checkpoint, None, dataset, max_length=options.max_length,
                                     batch_size=options.batch_size)
            mean, std = reward_statistics(results)
            print(f"reward mean {mean:.6g}, std {std:.6g} over {2 * results['n_pairs']} texts of {options.normalize_on}")
            return mean, std

    output = export_reward_model(args.model, args.output, options.format, options.overwrite,
                                 normalization=normalization, dtype=dtype, from_4bit=options.from_4bit)
    print(f"exported {args.model} to {output} ({options.format})")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from .training.planning import plan_memory

    options = _options(PlanOptions, args)
    plan = plan_memory(
        args.config,
        batch_size=options.batch_size,
        pair_length=options.pair_length,
        packing=options.packing,
        prompt_fraction=options.prompt_fraction,
        gradient_checkpointing=options.gradient_checkpointing,
        lora_r=options.lora_r,
        compute_dtype=options.compute_dtype,
        gpu_gb=options.gpu_gb,
    )
    print(plan.report())
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .recipe import main as run_recipe

    run_recipe(args.recipe_args, prog="bt-peft train")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    settings = _options(ServeSettings, args)
    try:
        from .serving.app import run_server
    except ModuleNotFoundError as error:
        raise OSError(f"{error.name} is not installed: pip install 'bt-peft[serve]' (starlette, uvicorn)") from None
    run_server(args.model, settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `bt-peft` parser: one subparser per command, each an `HfArgumentParser` over its options dataclass."""
    parser = argparse.ArgumentParser(
        prog="bt-peft", description="Bradley-Terry reward models with QLoRA: train, evaluate, score, merge, export, plan, serve."
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True, parser_class=HfArgumentParser)

    train = commands.add_parser(
        "train",
        add_help=False,
        help="train, evaluate and merge with a YAML config and flag overrides (the recipe); see `bt-peft train --help`",
        description="Runs the recipe (bt_peft.recipe): --config FILE.yaml plus any field as a flag (--max_steps 20).",
    )
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "eval",
        dataclass_types=EvalOptions,
        help="pairwise accuracy with a Wilson CI, ties, margins, accuracy by length; JSON and PNG plots",
        description="Evaluate a reward model on preference pairs: accuracy with a 95% Wilson CI, ties, margins, "
        "accuracy by pair length. With --output_dir, writes evaluation.json and rewards/margins/length PNGs.",
    )
    evaluate.add_argument("model", help="merged checkpoint, adapter directory or other reward checkpoint (a causal LM is refused: use --compare for the untrained baseline)")
    evaluate.add_argument("data", help="a .jsonl/.json file, a directory of <split>.jsonl, bt_peft:demo or a Hub dataset id")
    evaluate.set_defaults(run=run_eval)

    scoring = commands.add_parser(
        "score",
        dataclass_types=ScoreOptions,
        help="rewards of texts or conversations from a JSONL file",
        description='Score each line of INPUT: {"text": ...}, {"messages": [{"role", "content"}, ...]} or a bare list '
        'of messages. Output lines are the input rows with "reward" added (a bare list becomes {"messages": ...}).',
    )
    scoring.add_argument("model", help="merged checkpoint, adapter directory or other reward checkpoint")
    scoring.add_argument("input", help="JSONL file of texts or conversations")
    scoring.set_defaults(run=run_score)

    merge = commands.add_parser(
        "merge",
        dataclass_types=MergeOptions,
        help="merge an adapter into its base: a plain 2-label checkpoint with a model card",
        description="Merge a trained adapter (trainer.save_model) into its base and write a plain 2-label "
        "safetensors checkpoint with tokenizer and README.md model card; optionally push it to the Hub.",
    )
    merge.add_argument("adapter", help="adapter directory written by trainer.save_model")
    merge.add_argument("output", help="directory of the merged checkpoint")
    merge.set_defaults(run=run_merge)

    export = commands.add_parser(
        "export",
        dataclass_types=ExportOptions,
        help="a single-score checkpoint for TRL GRPO/RLOO, OpenRLHF, vLLM, TEI (or the 2-label HALOs form)",
        description="Export a merged checkpoint or an adapter directory (merged on the way) as a 1-label checkpoint "
        "whose logits[:, 0] is the reward (problem_type regression, OpenRLHF's value_head_prefix and, with "
        "--normalize_on, its reward mean/std), or --format halos: the 2-label form with logit 0 zero. Written shard "
        "by shard, atomically, with tokenizer and model card.",
    )
    export.add_argument("model", help="merged checkpoint (2 labels) or adapter directory")
    export.add_argument("output", help="directory of the exported checkpoint")
    export.set_defaults(run=run_export)

    plan = commands.add_parser(
        "plan",
        dataclass_types=PlanOptions,
        help="estimate the GPU memory of QLoRA training from a model config, per GPU size",
        description="Plan the GPU memory of QLoRA Bradley-Terry training from a model's config alone (no weights): "
        "NF4 weights, LoRA and optimizer states, activations; a verdict and the largest batch per GPU size.",
    )
    plan.add_argument("config", help="a preset (llama-3-8b, mistral-7b, qwen2.5-7b), a config.json file or a checkpoint directory")
    plan.set_defaults(run=run_plan)

    serve = commands.add_parser(
        "serve",
        dataclass_types=ServeSettings,
        help="an HTTP reward server (POST /get_reward) with dynamic batching, for RL loops in other processes",
        description='Serve rewards over HTTP: POST /get_reward {"query": [texts]} or {"messages": [conversations]} '
        'returns {"rewards": [floats]} (OpenRLHF\'s remote reward API); GET /health. Concurrent requests are '
        "batched by length under a token budget; a full queue answers 503; errors are JSON naming the field. "
        f"Binds 127.0.0.1 unless --host is given; --api_key or ${API_KEY_ENV} requires 'Authorization: Bearer KEY'. "
        "SIGTERM finishes the requests in flight, then exits.",
    )
    serve.add_argument("model", help="merged checkpoint, adapter directory, 1-label scalar export (or OpenRLHF checkpoint) or other reward checkpoint; a causal LM is refused")
    serve.set_defaults(run=run_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `bt-peft` with `argv` (default `sys.argv[1:]`). Returns the exit status: 0 on success, 1 on an error
    (printed as `bt-peft <command>: error: ...`), 2 on bad usage (argparse). bt-peft's progress and warnings go
    to stderr (`show_logs`)."""
    show_logs()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train" and {"-h", "--help"} & set(rest):
        print(TRAIN_HELP.read_text(encoding="utf-8"), end="")
        return 0
    if args.command == "train":
        args.recipe_args = rest  # the recipe's TrlParser reads --config and the overrides (and --help)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"bt-peft {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
