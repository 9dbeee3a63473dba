"""Peak host RAM of `merge_and_save`: the in-memory merge against the streaming merge (`low_memory=True`).

Builds a random Llama of about 1.2 B parameters in bf16 (TinyLlama's shape with SmolLM2's 49,152-token vocabulary),
saved by transformers in several shards, fabricates a LoRA adapter for it in peft's format (r=16 on q/k/v/o, random A
and B, the 2-label head in `modules_to_save`), then merges it both ways, each in its own process, and prints each
process's peak resident set size (`VmHWM`), wall time, their ratio and whether the two outputs are bitwise equal.

    python benchmarks/merge_memory.py [--layers 22] [--max-shard-size 500MB] [--workdir DIR] [--keep]

Target (issue #5): the streaming peak at most 0.4x the in-memory peak. Needs about 7 GB of disk and 6 GB of RAM.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET_RATIO = 0.4
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def peak_rss_gib() -> float:
    """This process's peak resident set size (`VmHWM`), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def build_base(path: Path, layers: int, max_shard_size: str) -> int:
    """A random bf16 Llama causal-LM checkpoint with the SmolLM2 tokenizer; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bt_peft.embedded import smollm2_checkpoint
    from bt_peft.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_checkpoint())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            parameter.data.fill_(1.0)
        else:
            parameter.data.normal_(0, 0.02)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(path)
    return model.num_parameters()


def fabricate_adapter(base: Path, path: Path, layers: int, hidden: int, kv_dim: int) -> None:
    """A LoRA adapter as peft saves one for a SEQ_CLS model: random A/B on q/k/v/o and the head, fp32."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    r = 16
    LoraConfig(r=r, lora_alpha=32, target_modules=ATTENTION, modules_to_save=["score"], task_type="SEQ_CLS",
               base_model_name_or_path=str(base)).save_pretrained(path)
    generator = torch.Generator().manual_seed(1)
    tensors = {"base_model.model.score.weight": torch.randn(2, hidden, generator=generator) * 0.02}
    for layer in range(layers):
        for name in ATTENTION:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            out_features = kv_dim if name in ("k_proj", "v_proj") else hidden
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, hidden, generator=generator) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, r, generator=generator) * 0.02
    save_file(tensors, path / "adapter_model.safetensors", metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(base).save_pretrained(path)


def run_child(args: list[str]) -> dict:
    """Run this script in a fresh process; its last stdout line is a JSON report."""
    completed = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child(mode: str, adapter: str, output: str, max_shard_size: str) -> None:
    """One merge (or just the imports, `mode == "imports"`) in this process; prints its peak RSS and wall time."""
    from bt_peft import merge_and_save

    start = time.perf_counter()
    if mode != "imports":
        merge_and_save(adapter, output, dtype=torch.bfloat16, max_shard_size=max_shard_size, low_memory=mode == "streaming")
    print(json.dumps({"peak_rss_gib": peak_rss_gib(), "seconds": time.perf_counter() - start}))


def bitwise_equal(first: Path, second: Path) -> bool:
    """Same keys and equal tensors, read one tensor at a time."""
    from safetensors import safe_open

    def tensor_files(directory: Path) -> dict[str, Path]:
        files = {}
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(path, framework="pt") as file:
                files.update(dict.fromkeys(file.keys(), path))
        return files

    ours, theirs = tensor_files(first), tensor_files(second)
    if ours.keys() != theirs.keys():
        return False
    for key in ours:
        with safe_open(ours[key], framework="pt") as a, safe_open(theirs[key], framework="pt") as b:
            if not torch.equal(a.get_tensor(key), b.get_tensor(key)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--max-shard-size", default="500MB")
    parser.add_argument("--workdir", help="where to build the checkpoints (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "ADAPTER", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.max_shard_size)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bt-peft-merge-memory-"))
    try:
        start = time.perf_counter()
        parameters = build_base(work / "base", args.layers, args.max_shard_size)
        fabricate_adapter(work / "base", work / "adapter", args.layers, hidden=2048, kv_dim=2048 // 32 * 4)
        shards = len(list((work / "base").glob("*.safetensors")))
        print(f"base: random Llama, {parameters / 1e9:.2f} B parameters, bf16, {shards} shards of <= {args.max_shard_size} "
              f"(built in {time.perf_counter() - start:.0f} s)")
        imports = run_child(["--child", "imports", "-", "-"])
        results = {mode: run_child(["--child", mode, str(work / "adapter"), str(work / mode), "--max-shard-size", args.max_shard_size])
                   for mode in ("in-memory", "streaming")}
        ratio = results["streaming"]["peak_rss_gib"] / results["in-memory"]["peak_rss_gib"]
        print(f"imports only:    peak RSS {imports['peak_rss_gib']:.2f} GiB")
        for mode, result in results.items():
            print(f"{mode + ' merge:':16} peak RSS {result['peak_rss_gib']:.2f} GiB, {result['seconds']:.0f} s")
        print(f"ratio streaming / in-memory: {ratio:.2f} (target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
        print(f"outputs bitwise equal: {bitwise_equal(work / 'in-memory', work / 'streaming')}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
