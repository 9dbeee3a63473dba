"""`benchmarks/gpu_check.py --cpu-smoke`: the one-command GPU check runs end to end on tiny models on the CPU, prints
its table and exits 0; a section that fails is a FAIL row with its error, the others still run, and the exit is 1."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import HH_DIR

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"


def run_gpu_check(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`gpu_check.py --cpu-smoke` on the tests' HH sample (a later `--data` in `flags` wins); its result and rows."""
    report = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, str(GPU_CHECK), "--cpu-smoke", "--json", str(report), "--data", str(HH_DIR), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert report.is_file(), result.stdout[-3000:] + result.stderr[-5000:]
    return result, json.loads(report.read_text())["rows"]


def test_cpu_smoke_runs_every_section_and_passes(tmp_path):
    result, rows = run_gpu_check(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    failed = [row for row in rows if row["status"] == "FAIL"]
    assert not failed and "0 FAIL" in result.stdout
    assert {row["section"] for row in rows} == {"packing", "defect3", "merge", "vram", "zero3", "serve-memory",
                                                "throughput", "serve", "recipe"}
    passed = {(row["section"], row["check"]) for row in rows if row["status"] == "PASS"}
    for section, check in [("packing", "float32 sdpa rewards (8 pairs)"), ("packing", "float32 sdpa LoRA+head grads (17)"),
                           ("packing", "bfloat16 sdpa LoRA+head grads (17)"), ("packing", "float32 flex_attention rewards (8 pairs)"),
                           ("defect3", "name + LoraConfig, no 4-bit: 1 step"), ("recipe", "merged vs trained rewards")]:
        assert (section, check) in passed, (section, check)
    throughput = [row["result"] for row in rows if row["section"] == "throughput"]
    assert len(throughput) == 2 and all(float(result.split()[0]) > 0 for result in throughput)
    vram = [row["check"] for row in rows if row["section"] == "vram"]  # no VRAM on a CPU: each run is reported
    assert vram == [f"{layers} layers, 64-token pairs, {layout}" for layers in (1, 2) for layout in ("packed", "padded")]
    zero3 = [row for row in rows if row["section"] == "zero3"]
    if importlib.util.find_spec("deepspeed") is not None:  # the test extra installs it
        assert [row["status"] for row in zero3] == ["PASS", "PASS"], zero3
        assert "4-bit weights on cpu, 14/14 partitioned 1/2" in zero3[0]["result"]
    else:
        assert [row["status"] for row in zero3] == ["INFO"] and "not installed" in zero3[0]["result"]
    serve_memory = {row["check"]: row["result"] for row in rows if row["section"] == "serve-memory"}
    assert serve_memory.keys() == {"bf16 checkpoint, serve defaults", "score_ids 2 x 64: KV cache"}  # verdicts: GPU
    serve = {row["check"].split(" (")[0]: row for row in rows if row["section"] == "serve"}
    assert set(serve) == {"one-at-a-time", "batched", "serve, 1 clients", "serve, 4 clients", "served vs one-at-a-time rewards"}
    assert all(float(row["result"].split()[0]) > 0 for name, row in serve.items() if "rewards" not in name)
    assert serve["served vs one-at-a-time rewards"]["status"] == "PASS"
    for row in rows:  # the printed table holds every row
        assert row["check"] in result.stdout and row["result"] in result.stdout


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path):
    result, rows = run_gpu_check(tmp_path, "--only", "packing,merge", "--data", str(tmp_path / "no-such-data"))
    assert result.returncode == 1
    packing = [row for row in rows if row["section"] == "packing"]
    assert {row["status"] for row in packing} == {"FAIL", "INFO"}  # INFO: bf16 FlexAttention, n/a on a CPU
    assert any("no-such-data" in row["result"] and "FileNotFoundError" in row["result"] for row in packing)
    assert [row["status"] for row in rows if row["section"] == "merge"] == ["INFO", "PASS"]
    assert "FAIL" in result.stdout and "Traceback" in result.stderr
