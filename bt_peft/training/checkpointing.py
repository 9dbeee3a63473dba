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
"""

import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import Trainer
from transformers.training_args import ParallelMode

from ..atomic import atomic_output_dir, write_atomically, write_json_atomically
from ..upstream import import_internal, require_attributes, require_call, require_methods

TRAINING_ARGS_NAME = "training_args.json"
TRAINER_STATE_NAME = "trainer_state.json"
PROCESSES_NAME = "processes.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# The `Trainer` hooks `SafeCheckpointMixin` overrides (no public API chooses how checkpoints are written), with the
# parameters it expects, and the methods that must still call them; checked at import against transformers.
HOOKS = {
    "_save": ("output_dir", "state_dict"),
    "_save_optimizer_and_scheduler": ("output_dir",),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_save_scaler": ("output_dir",),
    "_load_scaler": ("checkpoint",),
    "_save_rng_state": ("output_dir",),
    "_load_rng_state": ("checkpoint",),
}
require_methods(Trainer, HOOKS, "transformers")
require_call(Trainer, "save_model", ("_save",), "transformers")
require_call(Trainer, "_save_checkpoint", ("_save_optimizer_and_scheduler", "_save_scaler", "_save_rng_state"), "transformers")
require_call(Trainer, "_prepare_for_training", ("_load_optimizer_and_scheduler", "_load_scaler"), "transformers")
require_call(Trainer, "_run_epoch", ("_load_rng_state",), "transformers")
set_rng_state_for_device = import_internal("transformers", "transformers.trainer_pt_utils", "set_rng_state_for_device")


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


class SafeCheckpointMixin:
    """Mixed into a `transformers.Trainer` subclass (before the Trainer in the bases): checkpoints and saved models
    hold safetensors and JSON only, adapter saves are atomic, and resuming refuses incomplete checkpoints.

    - `save_model(output_dir, overwrite=False)`: writes into a temporary directory beside `output_dir` and renames
      it into place when complete. A non-empty `output_dir` is refused unless `overwrite=True` (which replaces it
      whole). The Trainer's own checkpoint saves replace their `checkpoint-N`; with several processes it is written
      in place by all of them, and becomes complete only when the last file is there: each process writes its own
      RNG file, all wait for each other, then the main process writes `processes.json` and the Trainer
      `trainer_state.json` (re-saving an existing `checkpoint-N` first removes those two, so it is never read half
      old, half new). `args.output_dir` itself (the run directory, holding the checkpoints) is written in place.
    - `train(resume_from_checkpoint=True)` resumes from the last *complete* checkpoint; an explicit path that is
      incomplete raises `ValueError` listing what is missing.
    - DeepSpeed and FSDP checkpoints are refused (their engines save their own, pickled, state).
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False, overwrite: bool = False) -> None:
        """Save the model (adapter and head for a `PeftModel`), tokenizer and training arguments (JSON).

        Args:
            output_dir (`str`, *optional*): target directory; default `args.output_dir` (written in place).
            _internal_call (`bool`): set by the Trainer for its checkpoints (which are replaced when present).
            overwrite (`bool`): replace a non-empty `output_dir`; otherwise `FileExistsError` names it.
        """
        run_dir = Path(self.args.output_dir).absolute()
        shared_checkpoint = _internal_call and self.args.world_size > 1  # other processes write their RNG files into it
        if shared_checkpoint:
            self._mark_incomplete(Path(output_dir))
        if output_dir is None or Path(output_dir).absolute() == run_dir or not self.args.should_save or shared_checkpoint:
            return super().save_model(output_dir, _internal_call)
        with atomic_output_dir(output_dir, overwrite=overwrite or _internal_call) as staging:
            super().save_model(str(staging), _internal_call)

    def _mark_incomplete(self, checkpoint: Path) -> None:
        """Before a multi-process save into `checkpoint`: the main process removes the files that make an existing
        one complete, and every process waits for that, so no process writes into a checkpoint that still reads as
        complete."""
        if self.args.should_save:
            for name in (TRAINER_STATE_NAME, PROCESSES_NAME):
                (checkpoint / name).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Upstream's `Trainer._save` without pickle: the main process writes the weights, tokenizer and training
        arguments (JSON); the other processes return, except when transformers sharded the model at load time
        (tensor parallelism), where they join `save_pretrained`'s gathers, as upstream's do."""
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        require_attributes(self, ("is_distributed_loading_by_transformers",), "transformers.Trainer", "transformers")
        if not self.args.should_save and not self.is_distributed_loading_by_transformers:
            return
        if self.args.should_save:
            output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model, keep_torch_compile=False).save_pretrained(
            output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        (output_dir / TRAINING_ARGS_NAME).write_text(self.args.to_json_string())

    def _refuse_sharded_engines(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError("bt-peft checkpoints (safetensors + JSON) do not support DeepSpeed or FSDP engines")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        self._refuse_sharded_engines()
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), output_dir, "optimizer")
            save_state(self.lr_scheduler.state_dict(), output_dir, "scheduler")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        self._refuse_sharded_engines()
        self.optimizer.load_state_dict(load_state(checkpoint, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(checkpoint, "scheduler"))

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            save_state(scaler.state_dict(), output_dir, "scaler")

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if checkpoint is not None and scaler is not None and (Path(checkpoint) / "scaler.json").is_file():
            scaler.load_state_dict(load_state(checkpoint, "scaler"))

    def _rng_name(self) -> str:
        return "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"

    def _save_rng_state(self, output_dir: str) -> None:
        states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            distributed = self.args.parallel_mode == ParallelMode.DISTRIBUTED
            states["cuda"] = torch.cuda.random.get_rng_state_all() if distributed else torch.cuda.random.get_rng_state()
        os.makedirs(output_dir, exist_ok=True)
        save_state(states, output_dir, self._rng_name())
        if self.args.world_size > 1:  # the last per-process file of the checkpoint: now it can be marked whole
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                write_json_atomically({"world_size": self.args.world_size}, Path(output_dir) / PROCESSES_NAME)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
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
            set_rng_state_for_device("CUDA", torch.cuda, states, self.args.parallel_mode == ParallelMode.DISTRIBUTED)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`; `resume_from_checkpoint=True` picks the last complete checkpoint of `args.output_dir`,
        and a checkpoint that cannot be resumed exactly raises `ValueError` saying what it lacks. Checkpoints under
        DeepSpeed or FSDP are refused here, before training, rather than at the first save."""
        if self.args.save_strategy != "no":
            self._refuse_sharded_engines()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir}")
        if resume_from_checkpoint:
            problems = checkpoint_problems(resume_from_checkpoint)
            if problems:
                raise ValueError(f"cannot resume from {resume_from_checkpoint}: {'; '.join(problems)}. It was probably "
                                 "interrupted while being written: resume from an earlier checkpoint")
            resume_from_checkpoint = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)
