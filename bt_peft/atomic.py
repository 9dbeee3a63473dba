"""Atomic outputs: a file or directory appears complete under its name, or not at all, and survives a power loss
once it is there (the data and the rename are flushed with fsync). The one place bt-peft writes results atomically:
`write_atomically` / `write_json_atomically` for files, `atomic_output_dir` for directories."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename inside it), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write a file through a temporary sibling renamed into place: readers see the old file or the new one whole.

    Args:
        path (`str`): the final file; its parent directory is created if needed.
        write (`Callable[[Path], Any]`): writes the content to the path it is given (a hidden `.<name>.tmp-*` file in
            the same directory, so the rename is atomic).

    Returns:
        `Path` of `path`, mode 0644, its data and the rename flushed (fsync). If `write` raises, the temporary file is
        removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    staging = Path(staging)
    try:
        write(staging)
        _fsync(staging)
        staging.chmod(0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def write_json_atomically(data: Any, path: str | os.PathLike) -> Path:
    """`write_atomically` of `data` as indented JSON (UTF-8). Returns `Path(path)`."""
    return write_atomically(path, lambda staging: staging.write_text(json.dumps(data, indent=2), encoding="utf-8"))


def check_output_dir(target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to replace a non-empty directory unless `overwrite` is set.

    Args:
        target (`str`): the final output directory.
        overwrite (`bool`): allow replacing an existing non-empty directory.

    Returns:
        `Path` of `target`. Raises `FileExistsError` naming it when it exists, is not empty and `overwrite` is off,
        or when it is a file.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"output path {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {target} is not empty; pass overwrite=True to replace it")
    return target


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write into a temporary directory beside `target`, then rename it into place when the block succeeds.

    Args:
        target (`str`): the final output directory.
        overwrite (`bool`): replace an existing non-empty `target` (it is moved aside, then deleted only after the
            new directory is in place).

    Yields:
        `Path` of the temporary directory (same file system as `target`, so the rename is atomic). If the block
        raises or the process dies, `target` is untouched; a killed process leaves only a `.<name>.tmp-*` sibling.
    """
    target = check_output_dir(target, overwrite).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
