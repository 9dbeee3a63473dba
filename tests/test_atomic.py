import pytest

from bt_peft.atomic import atomic_output_dir, check_output_dir


def siblings(target):
    return sorted(path.name for path in target.parent.iterdir() if path != target)


def test_a_completed_block_appears_under_the_target_name(tmp_path):
    target = tmp_path / "out" / "merged"
    with atomic_output_dir(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".merged.tmp-")
        assert not target.exists()
        (staging / "weights.bin").write_text("complete")
    assert (target / "weights.bin").read_text() == "complete"
    assert siblings(target) == []


def test_a_failed_block_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "merged"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_output_dir(target) as staging:
            (staging / "part").write_text("half")
            raise RuntimeError("midway")
    assert not target.exists() and siblings(target) == []

    target.mkdir()
    (target / "weights.bin").write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_output_dir(target, overwrite=True) as staging:
            (staging / "weights.bin").write_text("new, half")
            raise RuntimeError("midway")
    assert (target / "weights.bin").read_text() == "old" and siblings(target) == []


def test_overwrite_replaces_the_whole_directory(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "stale-shard").write_text("old")
    with atomic_output_dir(target, overwrite=True) as staging:
        (staging / "weights.bin").write_text("new")
    assert sorted(path.name for path in target.iterdir()) == ["weights.bin"]
    assert siblings(target) == []


def test_a_non_empty_target_is_refused_before_anything_is_staged(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "weights.bin").write_text("old")
    with pytest.raises(FileExistsError, match=rf"{target} is not empty; pass overwrite=True"):
        with atomic_output_dir(target):
            pytest.fail("the block must not run")
    assert (target / "weights.bin").read_text() == "old" and siblings(target) == []


def test_check_output_dir_accepts_missing_and_empty_and_refuses_files(tmp_path):
    assert check_output_dir(tmp_path / "missing") == tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
