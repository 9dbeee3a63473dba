"""Evaluation and serving: `score`/`score_ids` (scoring), `load_for_scoring` (loading), `evaluate_pairs` and
`pair_metrics` (metrics), `plot_evaluation` (plots), `compare_with_merged` (merge_check: the recipe's check of
a merged checkpoint within a memory budget). Imports only the core modules of `bt_peft`.

`bt_peft.evaluation.pair_metrics` and `bt_peft.evaluation.evaluate_pairs` (the module's names before it became this
package) stay importable from here.
"""

from .metrics import evaluate_pairs, pair_metrics

__all__ = ["evaluate_pairs", "pair_metrics"]
