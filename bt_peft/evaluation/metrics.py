"""Pairwise evaluation of a reward model: accuracy with a Wilson confidence interval, margins, reward
statistics and accuracy by pair length (`pair_metrics`), on a preference dataset (`evaluate_pairs`).

Conventions: a pair is correct when `chosen - rejected > tie_tolerance`; a tie (`|chosen - rejected| <=
tie_tolerance`) counts as wrong in the accuracy (as in RewardBench and the trainer's logged accuracy) and is
reported separately. A pair's length is the longer of its two sequences in tokens, as the model saw them.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import asdict

import datasets
import numpy as np
import torch
from scipy.stats import binomtest
from transformers import PreTrainedTokenizerBase

from ..atomic import write_json_atomically
from ..data import load_preference_file, prepare_preference_dataset
from ..tokenizer import trained_max_length
from .loading import load_for_scoring
from .scoring import score_ids

QUARTILES = (0.25, 0.5, 0.75)
"""Default length-bucket boundaries: these quantiles of the pair lengths (4 buckets)."""


def accuracy_interval(n_correct: int, n_pairs: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy (`scipy.stats.binomtest(...).proportion_ci(method="wilson")`).

    Args:
        n_correct (`int`): correct pairs.
        n_pairs (`int`): all pairs (at least 1).
        confidence (`float`): coverage of the interval, in (0, 1).

    Returns:
        `tuple[float, float]`: (low, high); unlike a percentile bootstrap it does not collapse when every pair (or
        none) is right: 7 of 7 gives about (0.65, 1.0) at 95 %.
    """
    if n_pairs < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_pairs >= 1 and 0 < confidence < 1, got {n_pairs}, {confidence}")
    interval = binomtest(n_correct, n_pairs).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def length_bucket_edges(lengths: np.ndarray, edges: Sequence[int] | None) -> list[int]:
    """Inner boundaries of the length buckets: `edges` checked, or the quartiles of `lengths` (numpy's "higher"
    method, so each is a length that occurs), leaving out any not above the shortest pair (no empty first bucket)."""
    if edges is None:
        quartiles = np.quantile(lengths, QUARTILES, method="higher")
        return sorted({int(edge) for edge in quartiles if edge > lengths.min()})
    edges = [int(edge) for edge in edges]
    if any(low >= high for low, high in zip(edges, edges[1:])):
        raise ValueError(f"length_buckets must be strictly increasing token counts, got {edges}")
    return edges


def accuracy_by_length(lengths: np.ndarray, correct: np.ndarray, edges: list[int]) -> list[dict]:
    """Count and accuracy of the pairs in each bucket `[edges[i-1], edges[i])`, the first and last open-ended.

    Returns one dict per bucket: `label` ("<128", "128-255", ">=256"), `lower` (inclusive, None when open),
    `upper` (exclusive, None when open), `count`, `accuracy` (None for an empty bucket).
    """
    bounds = [None, *edges, None]
    buckets = []
    for lower, upper in zip(bounds, bounds[1:]):
        inside = (lengths >= (lower or 0)) & (lengths < (upper if upper is not None else np.inf))
        if lower is None and upper is None:
            label = "all"
        elif lower is None:
            label = f"<{upper}"
        elif upper is None:
            label = f">={lower}"
        else:
            label = f"{lower}-{upper - 1}"
        count = int(inside.sum())
        accuracy = float(correct[inside].mean()) if count else None
        buckets.append({"label": label, "lower": lower, "upper": upper, "count": count, "accuracy": accuracy})
    return buckets


def reward_statistics(results: dict) -> tuple[float, float]:
    """OpenRLHF's reward normalization statistics of `evaluate_pairs` results: the mean and the unbiased standard
    deviation (at least 1e-8) of all chosen and rejected rewards together, as OpenRLHF's `RewardModelTrainer.evaluate`
    computes them and `get_llm_for_sequence_regression` reads them from `config.json` (`mean`, `std`)."""
    rewards = np.asarray(results["pairs"]["chosen_rewards"] + results["pairs"]["rejected_rewards"], dtype=np.float64)
    if len(rewards) < 2:
        raise ValueError(f"reward statistics need at least 2 rewards, got {len(rewards)}")
    return float(rewards.mean()), max(float(rewards.std(ddof=1)), 1e-8)


def pair_metrics(
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
    lengths: Sequence[int],
    *,
    confidence: float = 0.95,
    length_buckets: Sequence[int] | None = None,
    tie_tolerance: float = 0.0,
) -> dict:
    """Pairwise metrics of given rewards (no model involved).

    Args:
        chosen_rewards, rejected_rewards (`Sequence[float]`): reward of each pair's chosen / rejected sequence.
        lengths (`Sequence[int]`): each pair's length in tokens (the longer of its two sequences).
        confidence (`float`): coverage of the accuracy's Wilson interval (`accuracy_interval`).
        length_buckets (`Sequence[int]`, *optional*): inner bucket boundaries in tokens, strictly increasing,
            e.g. `[128, 256]` for `<128`, `128-255`, `>=256`; default: the quartiles of `lengths`.
        tie_tolerance (`float`): pairs with `|chosen - rejected| <= tie_tolerance` are ties (wrong in accuracy).

    Returns:
        `dict` (JSON-serializable): `n_pairs`, `accuracy`, `accuracy_ci` ([low, high]), `confidence`,
        `ci_method` ("wilson"), `ties`, `tie_tolerance`, `margin_mean`, `margin_median` (margin = chosen -
        rejected), `chosen_reward_mean`, `chosen_reward_std`, `rejected_reward_mean`, `rejected_reward_std`
        (population std), `length_buckets` (see `accuracy_by_length`), and `pairs`: `chosen_rewards`,
        `rejected_rewards`, `lengths` as lists, for plots.
    """
    chosen = np.asarray(chosen_rewards, dtype=np.float64)
    rejected = np.asarray(rejected_rewards, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(chosen) == len(rejected) == len(lengths) or len(chosen) == 0:
        raise ValueError(
            f"need as many chosen rewards, rejected rewards and lengths, at least one: got {len(chosen)}, "
            f"{len(rejected)}, {len(lengths)}"
        )
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    margins = chosen - rejected
    correct = margins > tie_tolerance
    low, high = accuracy_interval(int(correct.sum()), len(margins), confidence)
    return {
        "n_pairs": len(margins),
        "accuracy": float(correct.mean()),
        "accuracy_ci": [low, high],
        "confidence": confidence,
        "ci_method": "wilson",
        "ties": int((np.abs(margins) <= tie_tolerance).sum()),
        "tie_tolerance": tie_tolerance,
        "margin_mean": float(margins.mean()),
        "margin_median": float(np.median(margins)),
        "chosen_reward_mean": float(chosen.mean()),
        "chosen_reward_std": float(chosen.std()),
        "rejected_reward_mean": float(rejected.mean()),
        "rejected_reward_std": float(rejected.std()),
        "length_buckets": accuracy_by_length(lengths, correct, length_bucket_edges(lengths, length_buckets)),
        "pairs": {"chosen_rewards": chosen.tolist(), "rejected_rewards": rejected.tolist(), "lengths": lengths.tolist()},
    }


def evaluate_pairs(
    model: torch.nn.Module | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None,
    dataset: datasets.Dataset | list[dict] | str | os.PathLike,
    *,
    max_length: int | None = None,
    batch_size: int = 16,
    confidence: float = 0.95,
    length_buckets: Sequence[int] | None = None,
    tie_tolerance: float = 0.0,
    dtype: torch.dtype | None = None,
    output_json: str | os.PathLike | None = None,
    progress: bool = True,
    allow_new_head: bool = False,
) -> dict:
    """Score every pair of a preference dataset and compute `pair_metrics`.

    Args:
        model: a reward model in memory, or a path that `load_for_scoring` loads (adapter directory, merged or
            other checkpoint, `bt_peft:smollm2`).
        tokenizer (`PreTrainedTokenizerBase | None`): required with a model in memory; None with a path takes the
            tokenizer saved there.
        dataset: a `datasets.Dataset` or list of rows in any format `prepare_preference_dataset` accepts (TRL's
            formats, raw HH-RLHF text, `chosen_ids`/`rejected_ids`), or the path of a .jsonl/.json file.
        max_length (`int`, *optional*): as in training: longer pairs are cut from the left; default: the `max_length`
            the model was trained with, recorded in its tokenizer (`trained_max_length`), else no limit.
        batch_size (`int`): sequences per forward (`score_ids`, batched by length).
        confidence, length_buckets, tie_tolerance: see `pair_metrics`.
        dtype (`torch.dtype`, *optional*): compute dtype when `model` is a path (see `load_for_scoring`); default: the
            model's own (an adapter's training compute dtype, a checkpoint's saved dtype).
        output_json (`str`, *optional*): also write the result there (atomically).
        progress (`bool`): show a progress bar while scoring.
        allow_new_head (`bool`): `model` may be a path to a causal LM, scored with a new zero head (the untrained
            baseline); otherwise such a path raises `UntrainedHeadError` (see `load_for_scoring`).

    Returns:
        `dict`: `pair_metrics` plus `model` (the path, or the model's class name), `max_length` (the one applied),
        `data` (the `PreparationReport` as a dict: `name`, `total`, `kept`, `truncated`, `response_cut`, `skipped`)
        and `scoring_seconds` and `sequences_per_second` (wall time of the forwards).
    """
    model_name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        model, saved_tokenizer = load_for_scoring(model, compute_dtype=dtype, allow_new_head=allow_new_head)
        tokenizer = saved_tokenizer if tokenizer is None else tokenizer
    elif tokenizer is None:
        raise ValueError("evaluate_pairs needs the tokenizer of a model in memory (or pass the model's path)")
    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_preference_file(dataset)
    elif isinstance(dataset, list):
        dataset = datasets.Dataset.from_list(dataset)
    max_length = max_length or trained_max_length(tokenizer)
    prepared, report = prepare_preference_dataset(dataset, tokenizer, max_length, name="eval")
    columns = prepared.to_dict()
    chosen, rejected = columns["chosen_ids"], columns["rejected_ids"]
    start = time.perf_counter()
    rewards = score_ids(model, tokenizer, chosen + rejected, batch_size, progress)
    seconds = time.perf_counter() - start
    n = len(chosen)
    results = pair_metrics(
        rewards[:n].tolist(),
        rewards[n:].tolist(),
        [max(len(c), len(r)) for c, r in zip(chosen, rejected)],
        confidence=confidence,
        length_buckets=length_buckets,
        tie_tolerance=tie_tolerance,
    )
    results |= {
        "model": model_name,
        "max_length": max_length,
        "data": asdict(report),
        "scoring_seconds": round(seconds, 3),
        "sequences_per_second": round(2 * n / seconds, 2),
    }
    if output_json is not None:
        write_json_atomically(results, output_json)
    return results
