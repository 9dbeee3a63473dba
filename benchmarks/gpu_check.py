"""Every GPU-only check of bt-peft in one command, printed as one table (one H100/H200-class GPU, < 8 min, offline).

    python benchmarks/gpu_check.py                   # on the GPU machine (see benchmarks/README.md for the bundle)
    python benchmarks/gpu_check.py --cpu-smoke       # the same code on tiny models on the CPU (CI, ~2 min)
    python benchmarks/gpu_check.py --only packing,merge --json results.json

Sections (each guarded: one that fails prints FAIL with its error and the others still run):
    packing     packed vs padded rewards and LoRA/head gradients, fp32 and bf16, SDPA and FlexAttention, forward and
                backward (the comparison of tests/test_packing.py, on a random SmolLM2-135M-shaped 4-bit model)
    defect3     `BradleyTerryRewardTrainer(<path>, peft_config=LoraConfig(...))` without 4-bit: one training step
                (issue 12, defect 3: the Trainer moves the model to CUDA, trainable weights must stay there)
    merge       the exact merge (`from_4bit=True`) with its NF4 round trip on the CPU and on CUDA: max abs difference
                of the merged weights and of the rewards of the two merged checkpoints
    vram        peak VRAM of QLoRA training of a Llama-3-8B-shaped model at 1,024- and 2,048-token pairs, batch 1,
                packed and padded, each against `plan_memory` of the same layout (goal: within 10 %) and the goals
                (<= 6.0 / <= 7.5 GiB). Measured on the 8B
                shape with 2 and 4 decoder layers (random bf16 weights; embedding, vocab and widths as in 8B) and
                extrapolated linearly to 32 layers (weights and checkpointed activations grow by layer; the
                plan is made for the same layer counts and compared directly, then for 32)
    zero3       DeepSpeed ZeRO-3 switched on as the training arguments do it: `load_qlora_model` puts the 4-bit model
                on the process's GPU without a device_map, DeepSpeed partitions it, one step equals the unpartitioned
                model's (tests/zero3_check.py under torchrun; issue 20 item 1)
    serve-memory  a bf16 checkpoint (8B shape, 2 layers) loaded as `bt-peft serve` loads it by default: in bf16, at
                its bf16 size; the serving forward of 16 x 1,024 tokens returns no KV cache, its peak beside a
                forward with one (issue 20 items 2 and 3)
    throughput  pairs/s of stock `trl.RewardTrainer` + peft (arm a of benchmarks/throughput.py) vs ours
                (`BradleyTerryRewardTrainer` defaults, arm d), same model, HH pairs, batch and steps, one run each
    serve       benchmarks/serve.py on a 2-label checkpoint of the random small Llama (random head): texts/s of
                one-at-a-time scoring, of one batched call and of `bt-peft serve` with 1, 8 and 64 clients on the HH dev
                texts, fp32 (issue 13's target: >= 4x one-at-a-time at 64 clients), and the served rewards' difference
    recipe      `recipes/qlora_llama3.py` end to end with the demo config on the random small Llama (train, eval,
                merge from 4-bit, reload with plain transformers, compare rewards)

Models are random (nothing is downloaded): the small one has SmolLM2-135M's shape with the tests' 400-token BPE
tokenizer; `--cpu-smoke` uses the tests' 2-layer, 64-wide Llama instead, and reports n/a where only a GPU can
measure (VRAM, CPU-vs-CUDA NF4, FlexAttention backward). bt_peft is imported from this source tree (not installed);
bitsandbytes, trl and datasets may come from the bundle of `benchmarks/prepare_gpu_bundle.sh` (`.gpu_bundle/site`,
put on `sys.path` here and for the child processes when it exists). Exit status: 0 when no check FAILs, 1 otherwise.
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_SITE = ROOT / ".gpu_bundle" / "site"
BUNDLE_HH = ROOT / ".gpu_bundle" / "data" / "hh-rlhf-harmless-base"
IMPORT_PATHS = [str(BUNDLE_SITE)] * BUNDLE_SITE.is_dir() + [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
sys.path[:0] = IMPORT_PATHS  # bt_peft from this tree; the tests' and benchmarks' helpers, reused as they are

import torch  # noqa: E402
from hh_data import SHARED_HH_DIR  # noqa: E402

SECTIONS = ("packing", "defect3", "merge", "vram", "zero3", "serve-memory", "throughput", "serve", "recipe")
SMALL_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
"""SmolLM2-135M's shape (its vocabulary aside)."""
PACKING_TOLERANCE = {("cpu", torch.float32): 1e-5, ("cuda", torch.float32): 1e-4,
                     ("cpu", torch.bfloat16): 5e-2, ("cuda", torch.bfloat16): 5e-2}
"""Max abs reward difference (and gradient difference over max(1, max |gradient|)) of packed vs padded batches:
fp32 on the CPU as tests/test_packing.py; fp32 on CUDA 1e-4 (its attention and matmul kernels tile by sequence
length, so the two layouts sum in other orders); bf16 ~12 ulps at magnitude 1 (they round differently in every
layer)."""
MERGE_REWARD_TOLERANCE = 1e-2
"""Max abs reward difference of the CPU- and CUDA-rounded bf16 merges (a block scale off by its last bit moves a
weight by ~1e-3 relative; bf16 rewards of a random 30-layer model are only good to ~1e-2)."""
SERVE_SPEEDUP_GOAL = 4.0
"""Issue 13: `bt-peft serve` with 64 concurrent clients, at least this many times one-at-a-time scoring's texts/s."""
SERVE_REWARD_TOLERANCE = 1e-4
"""Max abs difference of served and one-at-a-time fp32 rewards (batches of other lengths tile the kernels otherwise)."""
PLAN_TOLERANCE = 0.10
VRAM_LAYERS = (2, 4)
FULL_LAYERS = 32


@dataclasses.dataclass
class Row:
    section: str
    check: str
    result: str
    limit: str = ""
    status: str = "PASS"  # PASS, FAIL or INFO (measured, nothing to pass)


@dataclasses.dataclass
class Context:
    smoke: bool
    device: str
    work: Path
    hh_dir: Path
    env: dict[str, str]
    small_model: Path | None = None

    def hh_file(self, split: str) -> Path:
        """`<hh_dir>/<split>.jsonl`; `FileNotFoundError` saying how to get it when it is not there."""
        path = self.hh_dir / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no HH-RLHF {path}: pass --data DIR or build the bundle "
                                    "(benchmarks/prepare_gpu_bundle.sh)")
        return path

    @property
    def dtype(self) -> torch.dtype:
        """The training compute dtype of the run: bf16 on a GPU, fp32 on the CPU."""
        return torch.float32 if self.smoke else torch.bfloat16


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def small_model(ctx: Context) -> Path:
    """The random small causal-LM Llama (SmolLM2-135M's shape; the tests' tiny one with --cpu-smoke), saved once."""
    if ctx.small_model is None:
        from transformers import LlamaForCausalLM

        from conftest import build_tokenizer, tiny_llama_config

        tokenizer = build_tokenizer()
        torch.manual_seed(0)
        config = tiny_llama_config(len(tokenizer), **({} if ctx.smoke else SMALL_SHAPE))
        path = ctx.work / "small-llama"
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        ctx.small_model = path
    return ctx.small_model


def max_gradient_difference(gradients: dict, reference: dict) -> float:
    """Max over trainable weights of max |difference| / max(1, max |reference gradient|) (test_packing's measure)."""
    return max((gradients[name] - reference[name]).abs().max().item() / max(1.0, reference[name].abs().max().item())
               for name in reference)


def check_packing(ctx: Context) -> list[Row]:
    from test_packing import examples, load, rewards_and_gradients, standard_rewards

    from bt_peft.training.packing import PackedPairCollator, packed_rewards

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for attention in ("sdpa", "flex_attention"):
            name = f"{str(dtype).removeprefix('torch.')} {attention}"
            if ctx.smoke and attention == "flex_attention" and dtype == torch.bfloat16:
                rows.append(Row("packing", name, "n/a on the CPU (torch's CPU FlexAttention fails to compile in bf16)",
                                "", "INFO"))
                continue
            try:
                model, tokenizer = load(small_model(ctx), compute_dtype=dtype, attn_implementation=attention)
                pairs = examples(tokenizer, ctx.hh_file("dev").parent, max_length=64 if ctx.smoke else 512)
                collator = PackedPairCollator(tokenizer.pad_token_id)
                packed = {key: value.to(model.device) for key, value in collator(pairs).items()}
                backward = not (ctx.smoke and attention == "flex_attention")  # torch has no CPU FlexAttention backward
                if backward:
                    expected, expected_grads = rewards_and_gradients(
                        model, lambda: standard_rewards(model, tokenizer, pairs, "right"))
                    actual, grads = rewards_and_gradients(model, lambda: packed_rewards(model, packed))
                else:
                    with torch.no_grad():
                        expected = torch.cat(standard_rewards(model, tokenizer, pairs, "right"))
                        actual = torch.cat(packed_rewards(model, packed))
                tolerance = PACKING_TOLERANCE[ctx.device, dtype]
                reward_diff = (actual.float() - expected.float()).abs().max().item()
                rows.append(Row("packing", f"{name} rewards ({len(pairs)} pairs)", f"max diff {reward_diff:.2e}",
                                f"<= {tolerance:.0e}", verdict(reward_diff <= tolerance)))
                if backward:
                    grad_diff = max_gradient_difference(grads, expected_grads)
                    rows.append(Row("packing", f"{name} LoRA+head grads ({len(grads)})",
                                    f"max rel diff {grad_diff:.2e}", f"<= {tolerance:.0e}", verdict(grad_diff <= tolerance)))
                else:
                    rows.append(Row("packing", f"{name} backward", "n/a on the CPU", "", "INFO"))
                del model
            except Exception as error:  # noqa: BLE001 - one combination failing must not hide the others
                rows.append(failure("packing", name, error))
    return rows


def check_defect3(ctx: Context) -> list[Row]:
    """Issue 12 defect 3: a model given by name, LoRA without 4-bit, no device_map: one step on the Trainer's device."""
    from datasets import Dataset
    from peft import LoraConfig

    from bt_peft import BradleyTerryRewardConfig, BradleyTerryRewardTrainer
    from conftest import preference_rows

    args = BradleyTerryRewardConfig(output_dir=str(ctx.work / "defect3"), per_device_train_batch_size=4, max_steps=1,
                                    learning_rate=1e-4, bf16=not ctx.smoke, use_cpu=ctx.smoke, report_to=[],
                                    save_strategy="no", logging_steps=1, max_length=64, disable_tqdm=True, seed=0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="SEQ_CLS")
    trainer = BradleyTerryRewardTrainer(str(small_model(ctx)), args=args, peft_config=lora,
                                        train_dataset=Dataset.from_list(preference_rows()))
    trainer.train()
    devices = {param.device.type for param in trainer.model.parameters() if param.requires_grad}
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    ok = devices == {ctx.device} and math.isfinite(loss)
    return [Row("defect3", "name + LoraConfig, no 4-bit: 1 step",
                f"loss {loss:.4f}, trainable on {','.join(sorted(devices))}", f"on {ctx.device}", verdict(ok))]


def merged_rewards(directory: Path, texts: list[str], device: str) -> torch.Tensor:
    """Rewards of a merged checkpoint loaded with plain transformers, one text at a time (no padding involved)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bt_peft import bt_reward

    model = AutoModelForSequenceClassification.from_pretrained(directory).to(device)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        return torch.cat([bt_reward(model(**tokenizer(text, return_tensors="pt").to(device)).logits).float().cpu()
                          for text in texts])


def check_merge(ctx: Context) -> list[Row]:
    """The exact merge's NF4 round trip on the CPU and on CUDA (`--cpu-smoke`: the CPU twice, a check of the path)."""
    from test_streaming_merge import TEXTS, random_adapter, weights

    from bt_peft import merge_and_save

    adapter = random_adapter(small_model(ctx), ctx.work / "merge-adapter")
    dtype = ctx.dtype
    merged = {route: merge_and_save(adapter, ctx.work / f"merged-nf4-{route}", dtype=dtype, from_4bit=True, device=device)
              for route, device in (("cpu", "cpu"), ("device", ctx.device))}
    cpu_weights, device_weights = weights(merged["cpu"]), weights(merged["device"])
    differing = sum(int((cpu_weights[key] != device_weights[key]).sum()) for key in cpu_weights)
    total = sum(tensor.numel() for tensor in cpu_weights.values())
    weight_diff = max((cpu_weights[key].float() - device_weights[key].float()).abs().max().item() for key in cpu_weights)
    reward_diff = (merged_rewards(merged["cpu"], TEXTS, ctx.device)
                   - merged_rewards(merged["device"], TEXTS, ctx.device)).abs().max().item()
    label = f"CPU vs {'CPU (smoke: no CUDA)' if ctx.smoke else 'CUDA'} NF4, {str(dtype).removeprefix('torch.')}"
    return [Row("merge", f"{label}: weights", f"max diff {weight_diff:.2e}, {differing}/{total} differ", "reported", "INFO"),
            Row("merge", f"{label}: rewards ({len(TEXTS)} texts)", f"max diff {reward_diff:.2e}",
                f"<= {MERGE_REWARD_TOLERANCE:.0e}", verdict(reward_diff <= MERGE_REWARD_TOLERANCE))]


def check_vram(ctx: Context) -> list[Row]:
    """Peak VRAM at 2 and 4 layers of the 8B shape, extrapolated to 32 (the tiny shape at 1 and 2 layers on the CPU),
    in both batch layouts, each planned as it is trained (`gpu_memory.LAYOUTS`)."""
    import gc

    from gpu_memory import GOALS_GIB, LAYOUTS, PROMPT_FRACTION, benchmark_config, run_length, save_random_checkpoint

    from bt_peft import load_qlora_model, plan_memory

    lengths = (64,) if ctx.smoke else (1024, 2048)
    layer_counts = (1, 2) if ctx.smoke else VRAM_LAYERS
    full = benchmark_config(ctx.smoke)
    measured, rows = {}, []
    for layers in layer_counts:
        config = benchmark_config(ctx.smoke)
        config.num_hidden_layers = layers
        checkpoint = save_random_checkpoint(config, ctx.work / f"vram-{layers}-layers")
        for length in lengths:
            for layout, packing in LAYOUTS.items():
                model, tokenizer = load_qlora_model(checkpoint, compute_dtype=ctx.dtype, attn_implementation="sdpa",
                                                    device_map={"": 0} if not ctx.smoke else {"": "cpu"})
                result = run_length(model, tokenizer, length, 1, 3, ctx.work / f"vram-run-{layers}-{length}-{layout}",
                                    not ctx.smoke, packing)
                del model
                gc.collect()
                plan = plan_memory(config, batch_size=1, pair_length=length, packing=packing,
                                   prompt_fraction=PROMPT_FRACTION, compute_dtype=ctx.dtype).peak_allocated / 2**30
                measured[layers, length, layout] = result["peak_gib"]
                name = f"{layers} layers, {length}-token pairs, {layout}"
                if result["peak_gib"] is None:
                    rows.append(Row("vram", name, f"ran (plan {plan:.3f} GiB)", "n/a on the CPU", "INFO"))
                else:
                    ratio = result["peak_gib"] / plan
                    rows.append(Row("vram", name, f"{result['peak_gib']:.2f} GiB, plan {plan:.2f} ({ratio:.0%})",
                                    f"plan +-{PLAN_TOLERANCE:.0%}", verdict(abs(ratio - 1) <= PLAN_TOLERANCE)))
    if ctx.smoke:
        return rows
    low, high = layer_counts
    for length in lengths:
        for layout, packing in LAYOUTS.items():
            per_layer = (measured[high, length, layout] - measured[low, length, layout]) / (high - low)
            extrapolated = measured[low, length, layout] + per_layer * (FULL_LAYERS - low)
            plan = plan_memory(full, batch_size=1, pair_length=length, packing=packing, prompt_fraction=PROMPT_FRACTION,
                               compute_dtype=ctx.dtype).peak_allocated / 2**30
            ratio, goal = extrapolated / plan, GOALS_GIB[length]
            name = f"8B ({FULL_LAYERS} layers, extrapolated), {length}, {layout}"
            rows.append(Row("vram", f"{name} vs plan", f"{extrapolated:.2f} GiB, plan {plan:.2f} ({ratio:.0%})",
                            f"plan +-{PLAN_TOLERANCE:.0%}", verdict(abs(ratio - 1) <= PLAN_TOLERANCE)))
            rows.append(Row("vram", f"{name} vs goal", f"{extrapolated:.2f} GiB", f"<= {goal} GiB",
                            verdict(extrapolated <= goal)))
    return rows


def check_zero3(ctx: Context) -> list[Row]:
    """Issue 20 item 1: tests/zero3_check.py under torchrun: ZeRO-3 switched on by training arguments, the 4-bit small
    Llama loaded by `load_qlora_model` (no device_map: ZeRO-3 refuses one) onto the process's GPU, partitioned by
    DeepSpeed, one step against the unpartitioned model. One process on the GPU (`--cpu-smoke`: 2 CPU processes)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        if ctx.smoke:
            return [Row("zero3", "ZeRO-3 load", "deepspeed is not installed (pip install -e '.[test]')", "", "INFO")]
        raise ImportError("deepspeed is not installed: benchmarks/prepare_gpu_bundle.sh bundles it")
    processes = 2 if ctx.smoke else 1
    report_path = ctx.work / "zero3.json"
    run_child([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               str(ROOT / "tests" / "zero3_check.py"), str(small_model(ctx)), str(report_path)], ctx, "zero3", timeout=600)
    report = json.loads(report_path.read_text())
    weights = report["four_bit"]
    partitioned = sum(weight["local"] == -(-weight["full"] // processes) for weight in weights)
    loaded = report["zero3_enabled"] and report["device"].startswith(ctx.device) and partitioned == len(weights)
    differences = max(report["max_abs_reward_diff"], report["max_rel_step_diff"])
    return [Row("zero3", f"load_qlora_model under ZeRO-3, {processes} process(es)",
                f"4-bit weights on {report['device']}, {partitioned}/{len(weights)} partitioned 1/{processes}",
                f"on {ctx.device}", verdict(loaded)),
            Row("zero3", "partitioned vs whole: rewards, one SGD step",
                f"max diff {report['max_abs_reward_diff']:.1e}, rel {report['max_rel_step_diff']:.1e}", "<= 1e-4",
                verdict(differences <= 1e-4))]


def check_serve_memory(ctx: Context) -> list[Row]:
    """Issue 20 items 3 and 2, the GPU side: a bf16 2-label checkpoint of the Llama-3-8B shape cut to 2 layers (random
    weights) loaded as `bt-peft serve` loads it with its default settings (`ServeSettings()`): the weights' dtype and
    the GPU memory they take; then the serving forward (`score_ids`) of 16 texts of 1,024 tokens: whether it returns
    a KV cache, and its peak GPU memory above the weights beside the same forward with `use_cache=True`. On
    `--cpu-smoke` (the tiny shape, 2 texts of 64 tokens) the same code reports what it sees, without a verdict."""
    import gc

    from gpu_memory import benchmark_config, save_random_checkpoint

    from bt_peft import AutoModelForBradleyTerry
    from bt_peft.evaluation.scoring import score_ids
    from bt_peft.serving.model import load_served_model
    from bt_peft.serving.settings import ServeSettings
    from bt_peft.tokenizer import load_tokenizer

    config = benchmark_config(ctx.smoke)
    config.num_hidden_layers = 2
    causal = save_random_checkpoint(config, ctx.work / "serve-memory-causal")
    checkpoint = ctx.work / "serve-memory-reward"
    model = AutoModelForBradleyTerry.from_pretrained(causal, dtype=torch.bfloat16)
    tokenizer = load_tokenizer(causal)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.no_grad():
        model.score.weight[1:].normal_(0.0, 0.5)
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    bf16_gib = sum(param.numel() for param in model.parameters()) * 2 / 2**30
    del model
    gc.collect()

    settings = ServeSettings()
    before = torch.cuda.memory_allocated() if not ctx.smoke else 0
    model, tokenizer = load_served_model(str(checkpoint), settings.dtype, settings.device, settings.load_in_4bit)
    weights_gib = (torch.cuda.memory_allocated() - before) / 2**30 if not ctx.smoke else None
    body_dtype = model.get_input_embeddings().weight.dtype
    device = str(next(model.parameters()).device)
    texts, length = (2, 64) if ctx.smoke else (16, 1024)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config.vocab_size, (texts, length), generator=generator).tolist()
    caches = []
    hook = model.register_forward_hook(lambda module, args, output: caches.append(output.cache))

    def peak_above_weights(forward: Callable[[], object]) -> float | None:
        if ctx.smoke:
            forward()
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        forward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - baseline) / 2**30

    served_peak = peak_above_weights(lambda: score_ids(model, tokenizer, ids, batch_size=texts))
    served_cache = caches[-1]
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
    with torch.no_grad():
        cached_peak = peak_above_weights(lambda: model(**batch, use_cache=True))
    hook.remove()
    del model
    gc.collect()
    if ctx.smoke:
        return [Row("serve-memory", "bf16 checkpoint, serve defaults", f"weights {body_dtype} on {device}",
                    "n/a on the CPU", "INFO"),
                Row("serve-memory", f"score_ids {texts} x {length}: KV cache",
                    "none returned" if served_cache is None else "returned", "n/a on the CPU", "INFO")]
    in_bf16 = body_dtype == torch.bfloat16 and weights_gib <= 1.05 * bf16_gib
    return [Row("serve-memory", "bf16 checkpoint, serve defaults",
                f"weights {body_dtype}, {weights_gib:.2f} GiB on {device} (bf16 size {bf16_gib:.2f})",
                "bf16, <= 1.05x", verdict(in_bf16)),
            Row("serve-memory", f"score_ids {texts} x {length}: KV cache",
                f"{'none' if served_cache is None else 'returned'}; peak +{served_peak:.2f} GiB (with a cache "
                f"+{cached_peak:.2f})", "none", verdict(served_cache is None))]


def run_child(command: list[str], ctx: Context, name: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a child process with the bundle and this tree importable; its output goes to `<work>/<name>.log`."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ctx.env)
    (ctx.work / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{name} exited with {result.returncode}: {result.stderr.strip()[-600:]}")
    return result


def check_throughput(ctx: Context) -> list[Row]:
    """Arms a (stock TRL + peft) and d (ours, the defaults) of benchmarks/throughput.py, each in its own process."""
    batch, steps, length = (2, 2, 64) if ctx.smoke else (8, 10, 512)
    options = ["--model", str(small_model(ctx)), "--data", str(ctx.hh_file("train")), "--batch-size", str(batch),
               "--steps", str(steps), "--max-length", str(length), "--workdir", str(ctx.work / "throughput")]
    results = {}
    for arm in ("a", "d"):
        child = run_child([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *options, "--run-arm", arm],
                          ctx, f"throughput-{arm}", timeout=600)
        results[arm] = json.loads(child.stdout.strip().splitlines()[-1])
    setting = f"batch {batch}, max_length {length}, {steps - 1} timed steps"
    return [Row("throughput", f"stock trl.RewardTrainer + peft ({setting})", f"{results['a']['pairs_per_s']:.2f} pairs/s",
                "", "INFO"),
            Row("throughput", "ours, defaults (packing + padding-free)", f"{results['d']['pairs_per_s']:.2f} pairs/s "
                f"({results['d']['pairs_per_s'] / results['a']['pairs_per_s']:.2f}x stock)", "", "INFO")]


def reward_checkpoint(ctx: Context) -> Path:
    """The small Llama as a 2-label reward checkpoint with a random head (the rewards differ from text to text)."""
    from bt_peft import AutoModelForBradleyTerry
    from bt_peft.tokenizer import bind_pad, load_tokenizer

    path = ctx.work / "small-reward"
    tokenizer = load_tokenizer(small_model(ctx))
    model = AutoModelForBradleyTerry.from_pretrained(small_model(ctx), dtype=torch.float32)
    bind_pad(model, tokenizer)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight[1:], std=0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def check_serve(ctx: Context) -> list[Row]:
    """benchmarks/serve.py in its own process (it starts the `bt-peft serve` process), medians over its repeats."""
    texts, length, clients, repeats = (16, 32, "1,4", 1) if ctx.smoke else (64, 256, "1,8,64", 2)
    report = ctx.work / "serve.json"
    run_child([sys.executable, str(ROOT / "benchmarks" / "serve.py"), str(reward_checkpoint(ctx)),
               "--data", str(ctx.hh_file("dev")), "--texts", str(texts), "--max-length", str(length), "--clients", clients,
               "--repeats", str(repeats), "--device", ctx.device, "--output", str(report)], ctx, "serve", timeout=600)
    results = json.loads(report.read_text())["results"]
    rows = []
    for name in dict.fromkeys(arm["arm"] for arm in results):
        arms = [arm for arm in results if arm["arm"] == name]
        speedup = statistics.median(arm["speedup"] for arm in arms)
        measured = (f"{statistics.median(arm['texts_per_s'] for arm in arms):.1f} texts/s (x{speedup:.2f}), p50 "
                    f"{statistics.median(arm['p50_ms'] for arm in arms):.0f} ms, p99 {statistics.median(arm['p99_ms'] for arm in arms):.0f} ms")
        goal = name == "serve, 64 clients" and not ctx.smoke
        rows.append(Row("serve", f"{name} ({texts} texts, <= {length} tokens)", measured,
                        f">= {SERVE_SPEEDUP_GOAL:.0f}x" if goal else "", verdict(speedup >= SERVE_SPEEDUP_GOAL) if goal else "INFO"))
    difference = max(arm.get("max_abs_reward_diff", 0.0) for arm in results)
    rows.append(Row("serve", "served vs one-at-a-time rewards", f"max diff {difference:.2e}",
                    f"<= {SERVE_REWARD_TOLERANCE:.0e}", verdict(difference <= SERVE_REWARD_TOLERANCE)))
    return rows


def check_recipe(ctx: Context) -> list[Row]:
    """The recipe with the demo config (its data, LoRA and merge settings) on the random small Llama."""
    output = ctx.work / "recipe"
    device_flags = (["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--merge_dtype", "float32"] if ctx.smoke
                    else ["--use_cpu", "false", "--bf16", "true", "--dtype", "bfloat16", "--merge_dtype", "bfloat16"])
    command = [sys.executable, str(ROOT / "recipes" / "qlora_llama3.py"), "--config",
               str(ROOT / "recipes" / "configs" / "demo_smollm2.yaml"), "--model_name_or_path", str(small_model(ctx)),
               "--output_dir", str(output), "--max_steps", "2" if ctx.smoke else "20", "--max_eval_samples", "16",
               "--max_length", "64" if ctx.smoke else "256", "--num_score_examples", "2", *device_flags]
    started = time.perf_counter()
    run_child(command, ctx, "recipe", timeout=900)
    summary = json.loads((output / "summary.json").read_text())
    reward_diff = summary["merged_vs_trained_max_abs_reward_diff"]
    tolerance = 1e-4 if ctx.smoke else MERGE_REWARD_TOLERANCE
    complete = all((output / name).exists() for name in ("adapter", "merged", "summary.json"))
    return [Row("recipe", f"demo config, random small Llama, {summary['steps']} steps",
                f"{time.perf_counter() - started:.0f} s, eval acc {summary['eval_accuracy_before']:.2f}->"
                f"{summary['eval_accuracy_after']:.2f}", "completes", verdict(complete)),
            Row("recipe", "merged vs trained rewards", f"max diff {reward_diff:.2e}", f"<= {tolerance:.0e}",
                verdict(reward_diff <= tolerance))]


CHECKS: dict[str, Callable[[Context], list[Row]]] = {
    "packing": check_packing, "defect3": check_defect3, "merge": check_merge, "vram": check_vram,
    "zero3": check_zero3, "serve-memory": check_serve_memory, "throughput": check_throughput, "serve": check_serve,
    "recipe": check_recipe,
}


def failure(section: str, check: str, error: BaseException) -> Row:
    """A FAIL row naming the error; the traceback goes to stderr."""
    traceback.print_exception(error, file=sys.stderr)
    message = " ".join(f"{type(error).__name__}: {error}".split())
    return Row(section, check, message[:120], "", "FAIL")


def print_table(rows: list[Row], header: str) -> None:
    widths = [max(len(getattr(row, field)) for row in rows + [Row("section", "check", "result", "limit", "status")])
              for field in ("section", "check", "result", "limit", "status")]
    print(f"\n{header}")
    for row in [Row("section", "check", "result", "limit", "status")] + rows:
        print("  ".join(getattr(row, field).ljust(width) for field, width in
                        zip(("section", "check", "result", "limit", "status"), widths)).rstrip())
    counts = {status: sum(row.status == status for row in rows) for status in ("PASS", "FAIL", "INFO")}
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['INFO']} INFO")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Sections: " + ", ".join(SECTIONS))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: checks the code paths")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--data", type=Path, default=None, help="HH-RLHF directory with train.jsonl and dev.jsonl "
                        f"(default: {SHARED_HH_DIR} when there, else {BUNDLE_HH})")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in sections if name not in CHECKS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU (torch.cuda.is_available() is False); --cpu-smoke runs the checks on the CPU",
              file=sys.stderr)
        return 2
    hh_dir = args.data or (SHARED_HH_DIR if SHARED_HH_DIR.is_dir() else BUNDLE_HH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(IMPORT_PATHS + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if args.cpu_smoke:  # neither this process (CUDA is not initialised yet) nor its children use a GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = ""
    import transformers

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bt-peft-gpu-check-") as work:
        ctx = Context(smoke=args.cpu_smoke, device="cpu" if args.cpu_smoke else "cuda", work=Path(work),
                      hh_dir=hh_dir, env=env)
        rows = []
        for name in sections:
            section_start = time.perf_counter()
            print(f"bt-peft gpu_check: {name} ...", file=sys.stderr, flush=True)
            try:
                rows += CHECKS[name](ctx)
            except Exception as error:  # noqa: BLE001 - a failing section is reported, the others still run
                rows.append(failure(name, "section", error))
            print(f"bt-peft gpu_check: {name} done in {time.perf_counter() - section_start:.0f} s", file=sys.stderr,
                  flush=True)
    device = "CPU smoke (tiny models)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    header = (f"bt-peft gpu_check: {device}; torch {torch.__version__}, transformers {transformers.__version__}; "
              f"{time.perf_counter() - started:.0f} s")
    print_table(rows, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [dataclasses.asdict(row) for row in rows]}, indent=2))
    return int(any(row.status == "FAIL" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
