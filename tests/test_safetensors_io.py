"""The tensor-by-tensor safetensors reader and writer (`bt_peft.export.safetensors_io`): what it writes, safetensors
reads back; what it reads of a checkpoint, it names; a directory without weights is named in the error."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from bt_peft.export.safetensors_io import checkpoint_tensors, file_dtype, read_tensor, write_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_safetensors_writes_what_safetensors_reads(tmp_path, dtype):
    tensors = {"b": torch.randn(3, 5).to(dtype), "a": torch.randn(7).to(dtype), "scalar": torch.tensor(2.5, dtype=dtype)}
    write_safetensors(tmp_path / "x.safetensors", {key: list(t.shape) for key, t in tensors.items()}, dtype, tensors.__getitem__)
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[key], tensors[key]) for key in tensors)
    with pytest.raises(RuntimeError, match="came out"):
        write_safetensors(tmp_path / "y.safetensors", {"a": [8]}, dtype, tensors.__getitem__)


def test_checkpoint_tensors_reads_keys_shapes_and_dtype_of_a_checkpoint(tmp_path):
    tensors = {"w": torch.randn(4, 3, dtype=torch.bfloat16), "b": torch.randn(4, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "model.safetensors")
    found = checkpoint_tensors(tmp_path)
    assert found == {"w": (tmp_path / "model.safetensors", [4, 3]), "b": (tmp_path / "model.safetensors", [4])}
    assert file_dtype(tmp_path / "model.safetensors", ["w", "b"]) == torch.bfloat16
    assert torch.equal(read_tensor(tmp_path / "model.safetensors", "w"), tensors["w"])
    save_file({"w": torch.randn(2), "i": torch.arange(2)}, tmp_path / "mixed.safetensors")
    with pytest.raises(ValueError, match="holds tensors of dtypes"):
        file_dtype(tmp_path / "mixed.safetensors", ["w", "i"])
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'} has no model.safetensors"):
        checkpoint_tensors(tmp_path / "empty")
