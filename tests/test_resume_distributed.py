"""Crash and resume under DDP: 2 CPU processes (`accelerate launch`, gloo) killed with SIGKILL while saving a checkpoint
resume from the last complete one and end with exactly the adapter and head of an uninterrupted 2-process run.

The kill lands where a multi-process save is most fragile: process 1 is stopped inside its RNG save of checkpoint-6,
after checkpoint-3 is complete, while process 0 has written everything it writes. That checkpoint-6 must read as
incomplete (its `processes.json`, written once every process has saved, is missing), so resuming takes checkpoint-3
and restores each process's own RNG state (LoRA dropout is on, so each step draws from it).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bt_peft.training.checkpointing import checkpoint_problems, last_complete_checkpoint
from test_checkpointing import make_trainer
from test_resume import assert_resumed_equals_uninterrupted, logged_batches

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DDP_CPU = ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"

# The child (`resume_child.train_modes`): 2 pairs per process (4 steps an epoch), 8 steps, a checkpoint every 3
# steps. Each process records its pid (the launcher starts them in sessions of their own: killing it leaves them
# running) and logs every batch it trains on. "crash": process 1 blocks inside its RNG save of checkpoint-6 (process 0
# marks each checkpoint save it finished); "resume" resumes in the same directory; "full" runs uninterrupted in another.
SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from resume_child import log_batch, train_modes
from bt_peft import BradleyTerryRewardTrainer

model_dir, output, modes = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
(output / "pids").mkdir(exist_ok=True)
(output / "pids" / str(os.getpid())).touch()


class Recording(BradleyTerryRewardTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        log_batch(output / f"batches-{{self.mode}}-{{self.args.process_index}}.jsonl", self.state.global_step, inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def save_rng_state(self, output_dir):
        if self.mode == "crash" and self.state.global_step == 6 and self.args.process_index == 1:
            (output / "blocked").touch()
            time.sleep(600)
        super().save_rng_state(output_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.process_index == 0:
            (output / f"saved-{{self.mode}}-{{self.state.global_step}}").touch()


train_modes(Recording, model_dir, output, modes, per_device_train_batch_size=2, use_cpu=True)
"""


def launch(script: Path, model_dir: Path, output: Path, *modes: str) -> subprocess.Popen:
    """`accelerate launch` of 2 CPU processes."""
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(DDP_CPU), str(script),
               str(model_dir), str(output), *modes]
    with open(output / f"log-{'-'.join(modes)}.txt", "w") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def kill(launcher: subprocess.Popen, output: Path) -> None:
    """While the launcher runs (so its training processes have not been reaped): SIGKILL them, then it."""
    if launcher.poll() is None:
        for pid_file in (output / "pids").glob("*"):
            try:
                os.kill(int(pid_file.name), signal.SIGKILL)
            except ProcessLookupError:  # it had just ended
                pass
        launcher.kill()
        launcher.wait()
    for pid_file in (output / "pids").glob("*"):
        pid_file.unlink()


def log_of(output: Path, *modes: str) -> str:
    return (output / f"log-{'-'.join(modes)}.txt").read_text()[-4000:]


@pytest.fixture(scope="module")
def crashed_and_resumed(tiny_llama_dir, tmp_path_factory) -> Path:
    """The crash (killed while process 1 saves checkpoint-6), then the resume and the uninterrupted run."""
    output = tmp_path_factory.mktemp("ddp-resume")
    script = output / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    crashing = launch(script, tiny_llama_dir, output, "crash")
    try:
        deadline = time.monotonic() + 300
        while not (output / "blocked").exists():
            assert crashing.poll() is None and time.monotonic() < deadline, log_of(output, "crash")
            time.sleep(0.1)
        # Process 0 goes on as far as it can: without the wait for every process it would write checkpoint-6's
        # trainer_state.json and mark the save finished; with it, it waits for process 1. Give it the time to.
        finished = time.monotonic() + 10
        while not (output / "saved-crash-6").exists() and time.monotonic() < finished:
            time.sleep(0.1)
    finally:
        kill(crashing, output)
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint .*checkpoint-6: no processes\.json"):
        assert last_complete_checkpoint(output / "run") == output / "run" / "checkpoint-3"
    assert not (output / "final-crash").exists()

    resuming = launch(script, tiny_llama_dir, output, "resume", "full")
    try:
        assert resuming.wait(timeout=600) == 0, log_of(output, "resume", "full")
    finally:
        kill(resuming, output)
    return output


def test_sigkill_during_a_ddp_checkpoint_then_resume_equals_an_uninterrupted_run(crashed_and_resumed):
    output = crashed_and_resumed
    # fp32 on the CPU, one thread per process, the same batches and RNG states on each process, and an all-reduce of
    # two values (a + b == b + a): the same operations in the same order, so the weights are bitwise equal
    # (tolerance 0). Any difference means some process's state was not restored.
    assert_resumed_equals_uninterrupted(output)

    for rank in (0, 1):  # each process trains on exactly the batches the uninterrupted run's did, from step 3
        reference = logged_batches(output, f"full-{rank}")
        assert [step for step, _ in reference] == list(range(8))
        assert logged_batches(output, f"crash-{rank}") == reference[:6]
        assert logged_batches(output, f"resume-{rank}") == reference[3:]
    assert logged_batches(output, "full-0") != logged_batches(output, "full-1")  # the processes split the data

    checkpoint = output / "run-full" / "checkpoint-6"
    assert not checkpoint_problems(checkpoint)
    assert sorted(path.name for path in checkpoint.glob("rng_state*")) == [
        "rng_state_0.json", "rng_state_0.safetensors", "rng_state_1.json", "rng_state_1.safetensors"]


@pytest.mark.parametrize("removed", ["rng_state_1.safetensors", "rng_state_1.json", "rng_state_0.json", "processes.json"])
def test_a_multi_process_checkpoint_missing_one_process_file_is_skipped(crashed_and_resumed, tmp_path, removed):
    run = tmp_path / "run"
    for name in ("checkpoint-3", "checkpoint-6"):
        shutil.copytree(crashed_and_resumed / "run-full" / name, run / name)
    (run / "checkpoint-6" / removed).unlink()  # as if that process was killed before writing it
    with pytest.warns(UserWarning, match=rf"skipping incomplete checkpoint .*checkpoint-6: no {removed}"):
        assert last_complete_checkpoint(run) == run / "checkpoint-3"


def test_resuming_a_two_process_checkpoint_in_one_process_warns_that_rng_is_not_restored(crashed_and_resumed,
                                                                                           tiny_llama_dir, tmp_path):
    trainer = make_trainer(tiny_llama_dir, tmp_path / "one-process")
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match=r"saved by 2 process\(es\), this run has 1: it has no rng_state\.json"):
        trainer.load_rng_state(str(crashed_and_resumed / "run-full" / "checkpoint-6"))
    assert torch.equal(torch.random.get_rng_state(), state)
