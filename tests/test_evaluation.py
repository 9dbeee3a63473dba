import json
import math

import numpy as np
import pytest
import torch

from bt_peft import evaluate_pairs, merge_and_save, prepare_preference_dataset, score
from bt_peft.data import encode
from bt_peft.evaluation.metrics import accuracy_interval, pair_metrics
from conftest import preference_rows

# margins 1, 0, -1, 4, -0.5: pairs 0 and 3 correct, pair 1 a tie
CHOSEN = [2.0, 1.0, 0.5, 3.0, 0.0]
REJECTED = [1.0, 1.0, 1.5, -1.0, 0.5]
LENGTHS = [10, 20, 30, 40, 50]


def test_pair_metrics_against_hand_computed_values():
    m = pair_metrics(CHOSEN, REJECTED, LENGTHS)
    assert m["n_pairs"] == 5 and m["accuracy"] == pytest.approx(0.4) and m["ties"] == 1
    assert m["margin_mean"] == pytest.approx(0.7) and m["margin_median"] == 0.0
    assert m["chosen_reward_mean"] == pytest.approx(1.3) and m["chosen_reward_std"] == pytest.approx(math.sqrt(5.8 / 5))
    assert m["rejected_reward_mean"] == pytest.approx(0.6) and m["rejected_reward_std"] == pytest.approx(math.sqrt(3.7 / 5))
    assert m["pairs"] == {"chosen_rewards": CHOSEN, "rejected_rewards": REJECTED, "lengths": LENGTHS}
    low, high = m["accuracy_ci"]
    assert 0 <= low <= 0.4 <= high <= 1


def test_default_length_buckets_are_the_quartiles():
    buckets = pair_metrics(CHOSEN, REJECTED, LENGTHS)["length_buckets"]
    assert [(b["label"], b["lower"], b["upper"], b["count"], b["accuracy"]) for b in buckets] == [
        ("<20", None, 20, 1, 1.0),
        ("20-29", 20, 30, 1, 0.0),
        ("30-39", 30, 40, 1, 0.0),
        (">=40", 40, None, 2, 0.5),
    ]


def test_user_length_buckets_and_empty_buckets():
    buckets = pair_metrics(CHOSEN, REJECTED, LENGTHS, length_buckets=[25, 100])["length_buckets"]
    assert [(b["label"], b["count"], b["accuracy"]) for b in buckets] == [
        ("<25", 2, 0.5), ("25-99", 3, pytest.approx(1 / 3)), (">=100", 0, None)
    ]
    same_length = pair_metrics(CHOSEN, REJECTED, [7] * 5)["length_buckets"]
    assert [(b["label"], b["count"]) for b in same_length] == [("all", 5)]


def test_tie_tolerance_widens_ties_which_count_as_wrong():
    m = pair_metrics(CHOSEN, REJECTED, LENGTHS, tie_tolerance=1.0)
    assert m["ties"] == 4 and m["accuracy"] == pytest.approx(0.2)  # margins 1, 0, -1, -0.5 are ties; only 4 is right


Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def test_wilson_interval_hand_checked_cases():
    # all right / none right: (n / (n + z^2), 1) and (0, z^2 / (n + z^2)), not the degenerate [1, 1] / [0, 0]
    assert accuracy_interval(7, 7) == pytest.approx((7 / (7 + Z95**2), 1.0))
    assert accuracy_interval(0, 7) == pytest.approx((0.0, Z95**2 / (7 + Z95**2)))
    # 30 of 50: center (k + z^2/2) / (n + z^2), half-width z sqrt(p(1-p)n + z^2/4) / (n + z^2)
    p, n, z = 0.6, 50, Z95
    center, half = (30 + z**2 / 2) / (n + z**2), z * np.sqrt(p * (1 - p) * n + z**2 / 4) / (n + z**2)
    assert accuracy_interval(30, 50) == pytest.approx((center - half, center + half))


def test_wilson_interval_widens_with_confidence():
    narrow, wide = accuracy_interval(30, 50, 0.5), accuracy_interval(30, 50, 0.99)
    assert wide[0] < narrow[0] <= 0.6 <= narrow[1] < wide[1]
    with pytest.raises(ValueError, match="0 < confidence < 1"):
        accuracy_interval(30, 50, 1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="as many"):
        pair_metrics(CHOSEN, REJECTED[:4], LENGTHS)
    with pytest.raises(ValueError, match="at least one"):
        pair_metrics([], [], [])
    with pytest.raises(ValueError, match="strictly increasing"):
        pair_metrics(CHOSEN, REJECTED, LENGTHS, length_buckets=[30, 20])
    with pytest.raises(ValueError, match="tie_tolerance"):
        pair_metrics(CHOSEN, REJECTED, LENGTHS, tie_tolerance=-1)


def texts(rows, side):
    return [row["prompt"] + row[side] for row in rows]


def test_in_memory_model_scores_pairs_like_score(trained):
    trainer, _ = trained
    model, tokenizer = trainer.model, trainer.processing_class
    rows = preference_rows(1)
    results = evaluate_pairs(model, tokenizer, rows, max_length=64, batch_size=3, progress=False)
    chosen, rejected = score(model, tokenizer, texts(rows, "chosen")), score(model, tokenizer, texts(rows, "rejected"))
    assert torch.allclose(torch.tensor(results["pairs"]["chosen_rewards"]), chosen, atol=1e-5)
    assert torch.allclose(torch.tensor(results["pairs"]["rejected_rewards"]), rejected, atol=1e-5)
    assert results["accuracy"] == (chosen > rejected).float().mean().item()
    lengths = [max(len(encode(tokenizer, c)), len(encode(tokenizer, r))) for c, r in zip(texts(rows, "chosen"), texts(rows, "rejected"))]
    assert results["pairs"]["lengths"] == lengths
    assert results["data"] == {"name": "eval", "total": 4, "kept": 4, "truncated": 0, "response_cut": 0, "skipped": {}}
    assert results["model"] == type(model).__name__ and results["max_length"] == 64


def test_model_in_memory_needs_its_tokenizer(trained):
    trainer, _ = trained
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate_pairs(trainer.model, None, preference_rows(1))


def test_adapter_and_merged_directories_agree_with_the_model_in_memory(trained, tmp_path):
    trainer, adapter_dir = trained
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(1)))
    in_memory = evaluate_pairs(trainer.model, trainer.processing_class, data_file, progress=False)
    from_adapter = evaluate_pairs(adapter_dir, None, data_file, output_json=tmp_path / "out" / "adapter.json")
    merged_dir = merge_and_save(adapter_dir, tmp_path / "merged", dtype=torch.float32, from_4bit=True)
    from_merged = evaluate_pairs(merged_dir, None, str(data_file), progress=False)

    assert from_adapter["pairs"] == in_memory["pairs"]  # same 4-bit model, same batches: bit for bit
    for side in ("chosen_rewards", "rejected_rewards"):
        merged, expected = np.array(from_merged["pairs"][side]), np.array(in_memory["pairs"][side])
        assert np.abs(merged - expected).max() <= 1e-5  # the exact merge's documented tolerance
    assert from_adapter["model"] == str(adapter_dir)
    assert json.loads((tmp_path / "out" / "adapter.json").read_text()) == from_adapter
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "adapter.json"]  # no temporary file left


def test_raw_hh_text_with_truncation_is_reported_as_prepared(trained, hh_dir):
    trainer, _ = trained
    from bt_peft import load_preference_file

    rows = load_preference_file(hh_dir / "dev.jsonl").select(range(6))
    results = evaluate_pairs(trainer.model, trainer.processing_class, rows, max_length=48, progress=False)
    _, report = prepare_preference_dataset(rows, trainer.processing_class, 48, name="eval")
    assert report.truncated > 0
    assert results["data"] == {"name": "eval", "total": 6, "kept": report.kept, "truncated": report.truncated,
                               "response_cut": report.response_cut, "skipped": report.skipped}
    assert results["n_pairs"] == report.kept and max(results["pairs"]["lengths"]) == 48
