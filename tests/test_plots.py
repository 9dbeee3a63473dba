import numpy as np
import pytest
from PIL import Image

from bt_peft import plot_evaluation
from bt_peft.evaluation import pair_metrics

FILES = ["rewards.png", "margins.png", "accuracy_by_length.png"]


def result(shift: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return pair_metrics(rng.normal(shift, 1, 60), rng.normal(0, 1, 60), rng.integers(10, 200, 60), length_buckets=[50, 100, 500])


def sizes(paths) -> list[tuple[int, int]]:
    for path in paths:
        assert path.stat().st_size > 5000 and path.read_bytes().startswith(b"\x89PNG")
    return [Image.open(path).size for path in paths]


def test_one_result_gives_three_panels_of_600_by_450(tmp_path):
    paths = plot_evaluation(result(1.0, 0), tmp_path / "plots")
    assert [p.name for p in paths] == FILES and all(p.parent == tmp_path / "plots" for p in paths)
    assert sizes(paths) == [(600, 450)] * 3


def test_two_results_are_drawn_side_by_side(tmp_path):
    paths = plot_evaluation({"before": result(0.0, 1), "after": result(1.5, 2)}, tmp_path)
    assert sizes(paths) == [(1200, 450)] * 3


def test_plots_depend_on_the_results(tmp_path):
    first = plot_evaluation(result(0.0, 1), tmp_path / "a")
    second = plot_evaluation(result(2.0, 1), tmp_path / "b")
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(first, second))


def test_anything_else_is_refused(tmp_path):
    with pytest.raises(ValueError, match="evaluate_pairs result"):
        plot_evaluation({"before": {"accuracy": 0.5}}, tmp_path)
    with pytest.raises(ValueError, match="evaluate_pairs result"):
        plot_evaluation({}, tmp_path)
