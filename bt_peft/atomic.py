"""Atomic output directories: a result appears complete under its name, or not at all."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
