"""Pickle-free, crash-safe Trainer checkpoints: safetensors + JSON for every state, atomic adapter saves.

A `checkpoint-N/` written by `SafeCheckpointMixin` holds:

- `adapter_model.safetensors`, `adapter_config.json`, tokenizer files: the adapter and head (`save_model`);
- `optimizer.{safetensors,json}`, `scheduler.{safetensors,json}`, `scaler.{…}` (fp16 only): tensors in
  safetensors, the rest of the state dict's structure in JSON (`save_state`);
- `rng_state.{safetensors,json}`: Python, NumPy, torch CPU and CUDA generators; with several processes, one
  `rng_state_{k}.{safetensors,json}` per process k, and `processes.json` (`{"world_size": n}`), written by the main
  process once every process has written its RNG file;
- `trainer_state.json` (global step, hence the data position; written last by the Trainer), `training_args.json`.

No `.bin`/`.pt`/`.pth` file is written, and resuming reads no pickle. A checkpoint counts as complete only when every
file is there (`checkpoint_problems`): a save killed part-way, on any process, is skipped by `last_complete_checkpoint`,
and the previous checkpoint is rotated away only after the new one is complete.

Only public `transformers.Trainer` surface is used. The Trainer runs with `save_only_model=True`, so its
`_save_checkpoint` writes no pickled optimizer, scheduler, scaler or RNG state; it calls the public
`save_model(checkpoint-N, _internal_call=True)` first and writes `trainer_state.json` after it (then rotates), and
`SafeCheckpointMixin.save_model` writes the training state there, so `trainer_state.json` still comes last.
`TrainingStateRestorer`, a `TrainerCallback`, loads it back: optimizer, scheduler and scaler in `on_train_begin` (they
exist by then), the RNG state at the moment the Trainer itself restores it (`on_epoch_begin` when the run resumes at
an epoch boundary, else `on_step_begin` of the first resumed step, after the skipped batches were fetched).
"""

import json
import math
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from ..atomic import atomic_output_dir, write_atomically, write_json_atomically
from ..upstream import require_parameter

TRAINING_ARGS_NAME = "training_args.json"
TRAINER_STATE_NAME = "trainer_state.json"
PROCESSES_NAME = "processes.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# `Trainer._save_checkpoint` calls `save_model(checkpoint-N, _internal_call=True)`: how a checkpoint save is told apart
require_parameter(Trainer.save_model, "transformers", "transformers.Trainer.save_model._internal_call")

def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """JSON-able form of `obj`; tensors and arrays go into `tensors` under their path `where`."""
    if isinstance(obj, (torch.Tensor, np.ndarray)) and where in tensors:
        raise ValueError(f"two tensors would be saved under {where!r} (a key containing '/'?)")
    if isinstance(obj, torch.Tensor):
        tensors[where] = obj.detach().cpu().contiguous()
        return {"tensor": where}
    if isinstance(obj, np.ndarray):
        tensors[where] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"ndarray": where}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, tensors, f"{where}/key"), _encode(v, tensors, f"{where}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"tuple": [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save {where!r} of type {type(obj).__name__} without pickle (tensors, arrays, "
                    "dicts, lists, tuples, numbers, strings and None only)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    (kind, value), = node.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "ndarray":
        return tensors[value].numpy()
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    return {_decode(k, tensors): _decode(v, tensors) for k, v in value}


def save_state(state: Any, directory: str | os.PathLike, name: str) -> None:
    """Save a state dict (optimizer, scheduler, RNG, …) without pickle.

    Args:
        state: nested dicts/lists/tuples of tensors, NumPy arrays, numbers, strings and None.
        directory (`str`): an existing directory.
        name (`str`): files `<name>.safetensors` (the tensors, keyed by their path in `state`) and `<name>.json`
            (the structure, with exact key and container types), each written atomically.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, name)
    directory = Path(directory)
    write_atomically(directory / f"{name}.safetensors", lambda p: safetensors.torch.save_file(tensors, p))
    write_atomically(directory / f"{name}.json", lambda p: p.write_text(json.dumps(structure)))


def load_state(directory: str | os.PathLike, name: str) -> Any:
    """Read back what `save_state(state, directory, name)` wrote: an equal state (tensors on the CPU)."""
    directory = Path(directory)
    tensors = safetensors.torch.load_file(directory / f"{name}.safetensors", device="cpu")
    return _decode(json.loads((directory / f"{name}.json").read_text()), tensors)


def rng_state_names(checkpoint: Path) -> tuple[list[str], list[str]]:
    """The RNG state files a checkpoint must hold, and what is wrong with its record of them.

    Returns:
        (`names`, `problems`): `["rng_state"]` for a single-process checkpoint; `rng_state_0` … `rng_state_{n-1}` for
        one whose `processes.json` says `n` processes saved it. A checkpoint with per-process RNG files but no readable
        `processes.json` is one whose processes did not all finish saving: no names, one problem.
    """
    try:
        world_size = json.loads((checkpoint / PROCESSES_NAME).read_text())["world_size"]
    except FileNotFoundError:
        if any(checkpoint.glob("rng_state_*")):
            return [], [f"no {PROCESSES_NAME} (a multi-process save whose processes did not all finish)"]
        return ["rng_state"], []
    except (OSError, ValueError, KeyError, TypeError):
        return [], [f"no readable {PROCESSES_NAME}"]
    if not isinstance(world_size, int) or world_size < 2:
        return [], [f"{PROCESSES_NAME}: world_size must be an integer >= 2, got {world_size!r}"]
    return [f"rng_state_{rank}" for rank in range(world_size)], []


def checkpoint_problems(checkpoint: str | os.PathLike) -> list[str]:
    """What keeps `checkpoint` from being resumed exactly; empty when it is complete.

    Args:
        checkpoint (`str`): a `checkpoint-N` directory.

    Returns:
        `list[str]`: missing or unreadable files (a checkpoint interrupted while being written, on any of the
        processes that save it, one saved with `save_only_model=True`, or one written by plain transformers with
        pickle files).
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    rng_names, problems = rng_state_names(path)
    if not any((path / name).is_file() for name in WEIGHTS_NAMES):
        problems.append(f"no weights ({' or '.join(WEIGHTS_NAMES)})")
    for name in ("optimizer", "scheduler", *rng_names):
        missing = [f"{name}{suffix}" for suffix in (".safetensors", ".json") if not (path / f"{name}{suffix}").is_file()]
        problems += [f"no {file}" for file in missing]
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        problems.append(f"no readable {TRAINER_STATE_NAME}")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles and problems:
        problems.append(f"pickle files {pickles} (a plain transformers checkpoint; bt-peft does not load pickle)")
    return problems


def resolve_resume_argument(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint `train(resume_from_checkpoint=...)` resumes from, checked complete, or None (a fresh run).

    Args:
        resume_from_checkpoint: True/False/None, a `checkpoint-N` path, or the strings "true"/"false"/"none"
            (any case), as a command-line flag arrives; True and "true" mean the last complete checkpoint.
        output_dir: where the run's checkpoints are (`args.output_dir`).

    Raises:
        `ValueError`: True with no complete checkpoint in `output_dir`, or a checkpoint that cannot be resumed
        exactly (saying what it lacks).
    """
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in ("true", "false", "none"):
        resume_from_checkpoint = {"true": True, "false": None, "none": None}[resume_from_checkpoint.strip().lower()]
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_complete_checkpoint(output_dir)
        if resume_from_checkpoint is None:
            raise ValueError(f"no complete checkpoint to resume from in {output_dir} (resume_from_checkpoint=true "
                             "resumes the last complete checkpoint-N there; pass a path, or false to start afresh)")
    problems = checkpoint_problems(resume_from_checkpoint)
    if problems:
        raise ValueError(f"cannot resume from {resume_from_checkpoint}: {'; '.join(problems)}. It was probably "
                         "interrupted while being written: resume from an earlier checkpoint")
    return str(resume_from_checkpoint)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step `checkpoint-N` in `output_dir` that `checkpoint_problems` finds complete (a warning names
    each newer, incomplete one skipped), or None."""
    output_dir = Path(output_dir)
    found = [p for p in output_dir.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()] if output_dir.is_dir() else []
    for path in sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name)[1]), reverse=True):
        problems = checkpoint_problems(path)
        if not problems:
            return path
        warnings.warn(f"skipping incomplete checkpoint {path}: {'; '.join(problems)}", stacklevel=2)
    return None




def updates_per_epoch(args: TrainingArguments, train_dataloader) -> int:
    """Optimizer steps per epoch, as `Trainer.set_initial_training_values` counts them (`max_steps` for a dataloader
    without a length)."""
    try:
        batches = len(train_dataloader)
    except TypeError:
        return max(args.max_steps, 1)
    return max(math.ceil(batches / args.gradient_accumulation_steps), 1)


class TrainingStateRestorer(TrainerCallback):
    """Restores a `SafeCheckpointMixin` checkpoint's training state when `train` resumes from `checkpoint`: the
    optimizer, scheduler and scaler in `on_train_begin`, and this process's RNG state where the Trainer restores it
    (before the resumed epoch's data order is drawn at an epoch boundary or with `ignore_data_skip`; otherwise after
    the batches already trained on were skipped, before the first resumed forward pass)."""

    def __init__(self, trainer: "SafeCheckpointMixin") -> None:
        self.trainer = trainer
        self.checkpoint: str | None = None
        self.rng_event: str | None = None  # "on_epoch_begin" or "on_step_begin" while the RNG state is pending

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader=None, **kwargs) -> None:
        if self.checkpoint is None:
            return
        self.trainer.load_training_state(self.checkpoint)
        at_epoch_start = args.ignore_data_skip or state.global_step % updates_per_epoch(args, train_dataloader) == 0
        self.rng_event = "on_epoch_begin" if at_epoch_start else "on_step_begin"

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.rng_event == "on_epoch_begin":
            self._restore_rng()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.rng_event == "on_step_begin":
            self._restore_rng()

    def _restore_rng(self) -> None:
        self.trainer.load_rng_state(self.checkpoint)
        self.checkpoint = self.rng_event = None


class SafeCheckpointMixin:
    """Mixed into a `transformers.Trainer` subclass (before the Trainer in the bases) whose `__init__` registers
    `self.training_state_restorer = TrainingStateRestorer(self)`:
    checkpoints and saved models hold safetensors and JSON only, adapter saves are atomic, and resuming refuses
    incomplete checkpoints.

    - `save_model(output_dir, overwrite=False)`: writes into a temporary directory beside `output_dir` and renames
      it into place when complete. A non-empty `output_dir` is refused unless `overwrite=True` (which replaces it
      whole). The Trainer's own checkpoint saves replace their `checkpoint-N`, with the training state in it; with
      several processes it is written in place by all of them, and becomes complete only when the last file is
      there: each process writes its own RNG file, all wait for each other, then the main process writes
      `processes.json` and the Trainer `trainer_state.json` (re-saving an existing `checkpoint-N` first removes
      those two, so it is never read half old, half new). `args.output_dir` itself (the run directory, holding the
      checkpoints) is written in place.
    - `train(resume_from_checkpoint=...)`: see `resolve_resume_argument`. It runs the Trainer with
      `args.save_only_model=True` (given back afterwards), so the Trainer itself writes no pickled state.
    - DeepSpeed and FSDP are refused (their engines save their own, pickled, state).
    """

    saves_training_state: bool = True
    """False while a `train` call runs whose arguments asked for `save_only_model=True`: checkpoints then hold the
    model only."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False, overwrite: bool = False) -> None:
        """Save the model (adapter and head for a `PeftModel`), tokenizer and training arguments (JSON); in the
        Trainer's checkpoint saves, also the training state (`save_training_state`).

        Args:
            output_dir (`str`, *optional*): target directory; default `args.output_dir` (written in place).
            _internal_call (`bool`): set by the Trainer for its own saves (a checkpoint is replaced when present).
            overwrite (`bool`): replace a non-empty `output_dir`; otherwise `FileExistsError` names it.
        """
        self._refuse_sharded_engines()
        run_dir = Path(self.args.output_dir).absolute()
        target = Path(output_dir) if output_dir is not None else run_dir
        checkpoint = _internal_call and target.name == f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        shared_checkpoint = checkpoint and self.args.world_size > 1  # other processes write their RNG files into it
        if shared_checkpoint:
            self._mark_incomplete(target)
        if target.absolute() == run_dir or not self.args.should_save or shared_checkpoint:
            self._write_model(target)
            if checkpoint and self.saves_training_state:
                self.save_training_state(target)
        else:
            with atomic_output_dir(target, overwrite=overwrite or _internal_call) as staging:
                self._write_model(staging)
                if checkpoint and self.saves_training_state:
                    self.save_training_state(staging)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def _mark_incomplete(self, checkpoint: Path) -> None:
        """Before a multi-process save into `checkpoint`: the main process removes the files that make an existing
        one complete, and every process waits for that, so no process writes into a checkpoint that still reads as
        complete."""
        if self.args.should_save:
            for name in (TRAINER_STATE_NAME, PROCESSES_NAME):
                (checkpoint / name).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _write_model(self, output_dir: Path) -> None:
        """The main process writes the weights, tokenizer and training arguments (JSON); the other processes return,
        except when transformers sharded the model at load time (the model's `is_distributed_loading_by_transformers`,
        transformers >= 5.24), where they join `save_pretrained`'s gathers."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not self.args.should_save and not getattr(model, "is_distributed_loading_by_transformers", False):
            return
        if self.args.should_save:
            output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir, is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        (output_dir / TRAINING_ARGS_NAME).write_text(self.args.to_json_string())

    def _refuse_sharded_engines(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError("bt-peft checkpoints (safetensors + JSON) do not support DeepSpeed or FSDP engines")

    def save_training_state(self, output_dir: str | os.PathLike) -> None:
        """Write the optimizer, scheduler and (fp16) scaler states (main process) and this process's RNG state into
        `output_dir`; with several processes, then wait for all and (main process) write `processes.json`."""
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), output_dir, "optimizer")
            save_state(self.lr_scheduler.state_dict(), output_dir, "scheduler")
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:
                save_state(scaler.state_dict(), output_dir, "scaler")
        self.save_rng_state(output_dir)
        if self.args.world_size > 1:  # the last per-process file of the checkpoint: now it can be marked whole
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                write_json_atomically({"world_size": self.args.world_size}, Path(output_dir) / PROCESSES_NAME)

    def load_training_state(self, checkpoint: str | os.PathLike) -> None:
        """Load the optimizer, scheduler and (when saved and used) scaler states of `checkpoint` into this trainer's."""
        self._refuse_sharded_engines()
        self.optimizer.load_state_dict(load_state(checkpoint, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(checkpoint, "scheduler"))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and (Path(checkpoint) / "scaler.json").is_file():
            scaler.load_state_dict(load_state(checkpoint, "scaler"))

    def _rng_name(self) -> str:
        return "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"

    def _distributed(self) -> bool:
        return self.args.parallel_mode == ParallelMode.DISTRIBUTED

    def save_rng_state(self, output_dir: str | os.PathLike) -> None:
        """Write this process's Python, NumPy, torch CPU and CUDA generator states into `output_dir`."""
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.random.get_rng_state_all() if self._distributed() else torch.cuda.random.get_rng_state()
        os.makedirs(output_dir, exist_ok=True)
        save_state(states, output_dir, self._rng_name())

    def load_rng_state(self, checkpoint: str | os.PathLike) -> None:
        """Set the generators to this process's state saved in `checkpoint`; a warning, and no change, when it has
        none (saved by another number of processes)."""
        if not (Path(checkpoint) / f"{self._rng_name()}.json").is_file():
            saved = rng_state_names(Path(checkpoint))[0]
            warnings.warn(f"{checkpoint} was saved by {max(len(saved), 1)} process(es), this run has {self.args.world_size}: "
                          f"it has no {self._rng_name()}.json, so the random generators are not restored and the "
                          "resumed run will not repeat the interrupted one exactly (resume with as many processes "
                          "for that)", stacklevel=2)
            return
        states = load_state(checkpoint, self._rng_name())
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.random.set_rng_state(states["cpu"])
        if torch.cuda.is_available() and "cuda" in states:
            if self._distributed():
                torch.cuda.random.set_rng_state_all(states["cuda"])
            else:
                torch.cuda.random.set_rng_state(states["cuda"])

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`, resuming from `resolve_resume_argument(resume_from_checkpoint)` with this trainer's
        training state. Checkpoints under DeepSpeed or FSDP are refused here, before training, rather than at the
        first save."""
        if self.args.save_strategy != "no":
            self._refuse_sharded_engines()
        checkpoint = resolve_resume_argument(resume_from_checkpoint, self.args.output_dir)
        self.training_state_restorer.checkpoint = checkpoint
        self.saves_training_state = not self.args.save_only_model
        self.args.save_only_model = True  # for this call only: the Trainer writes no pickled state, `save_model` does
        try:
            return super().train(checkpoint, *args, **kwargs)
        finally:
            self.args.save_only_model = not self.saves_training_state

