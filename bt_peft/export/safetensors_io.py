"""Safetensors checkpoints read and written one tensor at a time, so host RAM holds a tensor, not a model: where a
checkpoint is (`local_checkpoint`), what it holds (`checkpoint_tensors`, `file_dtype`), one tensor (`read_tensor`),
and a file written tensor by tensor (`write_safetensors`). The streaming merge and the reward export build on it."""

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
"""The dtypes `write_safetensors` writes, with their safetensors names."""
DTYPES_BY_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


def local_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """The local directory of a base checkpoint: `name_or_path` itself, or its Hub snapshot (weights and config only)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    patterns = ["config.json", SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "model-*.safetensors"]
    return Path(snapshot_download(str(name_or_path), allow_patterns=patterns))


def checkpoint_tensors(base_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every tensor of a safetensors checkpoint (single file or sharded with an index): key -> (file, shape).
    `FileNotFoundError` naming the directory when it holds neither."""
    index, single = base_dir / SAFE_WEIGHTS_INDEX_NAME, base_dir / SAFE_WEIGHTS_NAME
    if index.is_file():
        files = sorted({base_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    elif single.is_file():
        files = [single]
    else:
        raise FileNotFoundError(f"{base_dir} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}")
    tensors = {}
    for path in files:
        with safe_open(path, framework="pt") as file:
            tensors.update({key: (path, file.get_slice(key).get_shape()) for key in file.keys()})
    return tensors


def read_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor of a safetensors file; the file is opened for it alone, so its memory map is released at once."""
    with safe_open(path, framework="pt") as file:
        return file.get_tensor(key)


def write_safetensors(
    path: Path, shapes: dict[str, list[int]], dtype: torch.dtype, tensor_of: Callable[[str], torch.Tensor]
) -> None:
    """Write a safetensors file tensor by tensor: the header first (known from `shapes`), then each tensor's bytes
    as `tensor_of(key)` returns it, so only one tensor is in memory at a time. `RuntimeError` naming the key when a
    tensor comes out in another dtype or shape than declared."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in shapes.items():
        size = torch.Size(shape).numel() * dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(blob)) + blob)
        for key, shape in shapes.items():
            tensor = tensor_of(key)
            if list(tensor.shape) != shape or tensor.dtype != dtype:
                raise RuntimeError(f"write_safetensors: {key} came out {tensor.dtype} {list(tensor.shape)}, not {dtype} {shape}")
            file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def file_dtype(path: Path, keys: list[str]) -> torch.dtype:
    """The one dtype of the tensors `keys` of a safetensors file; `ValueError` when they mix dtypes or use one that
    `write_safetensors` does not write."""
    with safe_open(path, framework="pt") as file:
        names = {file.get_slice(key).get_dtype() for key in keys}
    if len(names) != 1 or next(iter(names)) not in DTYPES_BY_NAME:
        raise ValueError(f"export: {path} holds tensors of dtypes {sorted(names)}; expected one of "
                         f"{', '.join(DTYPES_BY_NAME)} throughout")
    return DTYPES_BY_NAME[names.pop()]
