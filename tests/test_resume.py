"""Crash and resume: a training process killed with SIGKILL mid-step resumes from its last checkpoint and ends with
exactly the adapter and head of an uninterrupted run, having trained on exactly the same batches."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent

# The child (`resume_child.train_modes`): batch 4 (4 steps an epoch), 8 steps, a checkpoint every 3 steps. It logs
# every batch it trains on; "crash" blocks inside step 5, after checkpoint-3; "resume" resumes in the same directory;
# "full" runs uninterrupted in another (after "resume", in the same process: one import less).
SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from resume_child import log_batch, train_modes
from bt_peft import BradleyTerryRewardTrainer

model_dir, output, modes = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]


class Recording(BradleyTerryRewardTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        log_batch(output / f"batches-{{self.mode}}.jsonl", self.state.global_step, inputs)
        if self.mode == "crash" and self.state.global_step == 4:
            (output / "blocked").touch()
            time.sleep(600)
        return super().training_step(model, inputs, num_items_in_batch)


train_modes(Recording, model_dir, output, modes, per_device_train_batch_size=4, **{batches})
"""


def run_child(script: Path, model_dir: Path, output: Path, *modes: str) -> subprocess.Popen:
    with open(output / f"log-{'-'.join(modes)}.txt", "w") as log:
        return subprocess.Popen([sys.executable, str(script), str(model_dir), str(output), *modes], cwd=TESTS.parent,
                                stdout=log, stderr=subprocess.STDOUT)


def log_of(output: Path, *modes: str) -> str:
    return (output / f"log-{'-'.join(modes)}.txt").read_text()[-3000:]


def assert_resumed_equals_uninterrupted(output: Path) -> None:
    """`final-resume` (resumed from `run/checkpoint-3`) holds bitwise the adapter and head of `final-full`, and the
    steps after the checkpoint did train."""
    expected = load_file(output / "final-full" / "adapter_model.safetensors")
    resumed = load_file(output / "final-resume" / "adapter_model.safetensors")
    assert any("score" in name for name in expected) and any("lora_A" in name for name in expected)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    trained = load_file(output / "run" / "checkpoint-3" / "adapter_model.safetensors")
    assert not all(torch.equal(trained[name], resumed[name]) for name in trained)


def logged_batches(output: Path, mode: str) -> list[tuple[int, str]]:
    return [tuple(json.loads(line)) for line in (output / f"batches-{mode}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("batches", [{}, {"packing": False, "padding_free": False}], ids=["packed", "padded"])
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(tiny_llama_dir, tmp_path, batches):
    """Packed (shared-prefix, padding-free: the default) and standard padded batches."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), batches=batches))
    crashing = run_child(script, tiny_llama_dir, tmp_path, "crash")
    deadline = time.monotonic() + 180
    while not (tmp_path / "blocked").exists():
        assert crashing.poll() is None and time.monotonic() < deadline, log_of(tmp_path, "crash")
        time.sleep(0.1)
    os.kill(crashing.pid, signal.SIGKILL)
    assert crashing.wait() == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"] and not (tmp_path / "final-crash").exists()
    resuming = run_child(script, tiny_llama_dir, tmp_path, "resume", "full")
    assert resuming.wait(timeout=300) == 0, log_of(tmp_path, "resume", "full")

    # fp32 on the CPU, one thread, same batches, same RNG: the same operations in the same order, so the weights
    # are bitwise equal (tolerance 0). Any difference means some state was not restored.
    assert_resumed_equals_uninterrupted(tmp_path)

    # data position: the resumed run trains on exactly the batches the uninterrupted run trained on from step 3
    reference_batches = logged_batches(tmp_path, "full")
    assert [step for step, _ in reference_batches] == list(range(8))
    assert logged_batches(tmp_path, "crash") == reference_batches[:5]
    assert logged_batches(tmp_path, "resume") == reference_batches[3:]


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    """8 pairs a step, 2 steps an epoch: checkpoint-6 ends an epoch, so the RNG state must be back before the next
    epoch's data order is drawn (not at its first step, as mid-epoch)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), batches={}).replace("per_device_train_batch_size=4",
                                                                          "per_device_train_batch_size=8"))
    full = run_child(script, tiny_llama_dir, tmp_path, "full")
    assert full.wait(timeout=300) == 0, log_of(tmp_path, "full")
    shutil.copytree(tmp_path / "run-full" / "checkpoint-6", tmp_path / "run" / "checkpoint-6")
    resuming = run_child(script, tiny_llama_dir, tmp_path, "resume")
    assert resuming.wait(timeout=300) == 0, log_of(tmp_path, "resume")
    expected = load_file(tmp_path / "final-full" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "final-resume" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert logged_batches(tmp_path, "resume") == logged_batches(tmp_path, "full")[6:]
