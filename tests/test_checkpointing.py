import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from bt_peft import BradleyTerryRewardTrainer, load_qlora_model
from bt_peft.training.checkpointing import checkpoint_problems, last_complete_checkpoint, load_state, save_state
from conftest import fp32_args, preference_rows

TESTS = Path(__file__).resolve().parent
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training_args.json"}


def make_trainer(model_dir: Path, output: Path, **overrides) -> BradleyTerryRewardTrainer:
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(model_dir, compute_dtype=torch.float32)
    args = fp32_args(output, save_strategy="steps", save_steps=2, **overrides)
    return BradleyTerryRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(preference_rows()),
                                     processing_class=tokenizer)


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    """4 steps with checkpoints at 2 and 4, then `save_model(<output>/adapter)`."""
    output = tmp_path_factory.mktemp("run")
    trainer = make_trainer(tiny_llama_dir, output)
    trainer.train()
    trainer.save_model(str(output / "adapter"))
    return trainer, output


def assert_equal_states(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_equal_states(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_states(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


def test_save_state_round_trips_optimizer_scheduler_and_rng_states_exactly(tmp_path):
    param = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    for _ in range(2):
        param.grad = torch.randn(3, 2)
        optimizer.step(), scheduler.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state(),
             "odd": {1.5: [float("nan"), float("inf"), None, True, "x"], (1, 2): ()}}
    save_state(state, tmp_path, "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded = load_state(tmp_path, "state")
    assert_equal_states(state, loaded)
    random.setstate(loaded["python"])
    np.random.set_state(loaded["numpy"])  # accepted back by the generators they came from
    restored = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1.0)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.param_groups[0]["betas"] == (0.8, 0.9)


def test_save_state_refuses_what_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"'state/hook'.*function"):
        save_state({"hook": print}, tmp_path, "state")


def test_checkpoints_and_saved_adapter_hold_no_pickle(run):
    trainer, output = run
    written = [p for p in output.rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    checkpoint = output / "checkpoint-4"
    assert ADAPTER_FILES | {f"{name}.{ext}" for name in ("optimizer", "scheduler", "rng_state") for ext in ("json", "safetensors")} \
        <= {p.name for p in checkpoint.iterdir()}
    assert checkpoint_problems(checkpoint) == []
    assert ADAPTER_FILES <= {p.name for p in (output / "adapter").iterdir()}
    assert json.loads((output / "adapter" / "training_args.json").read_text())["learning_rate"] == trainer.args.learning_rate
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 4
    optimizer = load_state(checkpoint, "optimizer")
    assert len(optimizer["state"]) == sum(p.requires_grad for p in trainer.model.parameters())
    assert load_state(checkpoint, "scheduler")["last_epoch"] == 4
    assert not list(output.glob(".*tmp-*"))  # no staging directory left behind


def test_save_model_refuses_a_non_empty_directory_unless_overwrite(run):
    trainer, output = run
    target = output / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken is not empty; pass overwrite=True"):
        trainer.save_model(str(target))
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    trainer.save_model(str(target), overwrite=True)
    assert {p.name for p in target.iterdir()} >= ADAPTER_FILES and not (target / "notes.txt").exists()
    saved, reference = load_file(target / "adapter_model.safetensors"), load_file(output / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(saved[name], reference[name]) for name in reference)


def test_resume_takes_the_last_complete_checkpoint_and_refuses_incomplete_ones(run, tmp_path):
    trainer, output = run
    run_dir = tmp_path / "run"
    shutil.copytree(output / "checkpoint-2", run_dir / "checkpoint-2")
    shutil.copytree(output / "checkpoint-4", run_dir / "checkpoint-4")
    (run_dir / "checkpoint-4" / "optimizer.safetensors").unlink()  # as if killed while writing it
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint .*checkpoint-4: no optimizer.safetensors"):
        assert last_complete_checkpoint(run_dir) == run_dir / "checkpoint-2"
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-4: no optimizer.safetensors"):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))

    plain = tmp_path / "plain-transformers"  # optimizer/scheduler/RNG as pickles
    shutil.copytree(output / "checkpoint-2", plain)
    for name in ("optimizer", "scheduler", "rng_state"):
        for ext in ("json", "safetensors"):
            (plain / f"{name}.{ext}").unlink()
        torch.save({}, plain / f"{name}.pt")
    problems = checkpoint_problems(plain)
    assert "no optimizer.json" in problems and any("pickle files" in p and "optimizer.pt" in p for p in problems)


CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_checkpointing import make_trainer
trainer = make_trainer(Path(sys.argv[1]), Path(sys.argv[2]) / "run")
for i in range(10_000):
    trainer.save_model(str(Path(sys.argv[2]) / f"adapter-{{i}}"))
"""


def test_a_killed_save_leaves_each_target_absent_or_complete(tiny_llama_dir, tmp_path):
    script = tmp_path / "save_forever.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    child = subprocess.Popen([sys.executable, str(script), str(tiny_llama_dir), str(tmp_path)], cwd=TESTS.parent,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("adapter-*"))) < 3:
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL

    reference = load_file(tmp_path / "adapter-0" / "adapter_model.safetensors")
    for target in tmp_path.glob("adapter-*"):
        assert ADAPTER_FILES <= {p.name for p in target.iterdir()}, target
        saved = load_file(target / "adapter_model.safetensors")
        assert all(torch.equal(saved[name], reference[name]) for name in reference)
    # the kill landed inside a save (saving is all the child does): its partial output is only a hidden sibling
    assert len(list(tmp_path.glob(".adapter-*.tmp-*"))) == 1
