"""bt-peft: Bradley-Terry reward models with QLoRA on the Hugging Face stack.

The reward of a sequence is `logits[:, 1]` of a 2-label sequence-classification head (`bt_reward`).

Every public name below is imported on first use (PEP 562), so `import bt_peft` and `bt-peft --help` load neither
TRL nor matplotlib; `from bt_peft import X` and `bt_peft.X` work as usual.
"""

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "AutoModelForBradleyTerry": "modeling",
    "BradleyTerryModelConfig": "training.model_config",
    "BradleyTerryRewardConfig": "training.config",
    "BradleyTerryRewardTrainer": "training.trainer",
    "BradleyTerryScriptArguments": "training.script_arguments",
    "MemoryPlan": "training.planning",
    "NonFiniteLossError": "training.guards",
    "PackedPairCollator": "training.packing",
    "PickleCheckpointError": "safe_loading",
    "PreferenceDataError": "data",
    "RunFinisher": "finish",
    "TrainingSetupError": "validation",
    "add_lora": "training.qlora",
    "bradley_terry_loss": "loss",
    "bt_reward": "reward",
    "evaluate_pairs": "evaluation.metrics",
    "export_reward_model": "export.reward_export",
    "load_for_scoring": "evaluation.loading",
    "load_preference_file": "data",
    "load_qlora_model": "training.qlora",
    "load_reward_model": "quantization",
    "load_split": "data",
    "merge_and_save": "export.merge",
    "plan_memory": "training.planning",
    "plot_evaluation": "evaluation.plots",
    "prepare_preference_dataset": "data",
    "push_to_hub": "export.model_card",
    "resolve_model": "embedded",
    "score": "evaluation.scoring",
    "score_ids": "evaluation.scoring",
    "show_logs": "console",
    "write_model_card": "export.model_card",
}
"""Public name -> the module (relative to `bt_peft`) that defines it."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import the module that defines the public `name` on first access, and cache the value here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static tools and IDEs see; at run time the names come from `__getattr__`
    from .console import show_logs
    from .data import PreferenceDataError, load_preference_file, load_split, prepare_preference_dataset
    from .embedded import resolve_model
    from .evaluation.loading import load_for_scoring
    from .evaluation.metrics import evaluate_pairs
    from .evaluation.plots import plot_evaluation
    from .evaluation.scoring import score, score_ids
    from .export.merge import merge_and_save
    from .export.model_card import push_to_hub, write_model_card
    from .export.reward_export import export_reward_model
    from .finish import RunFinisher
    from .loss import bradley_terry_loss
    from .modeling import AutoModelForBradleyTerry
    from .quantization import load_reward_model
    from .reward import bt_reward
    from .safe_loading import PickleCheckpointError
    from .training.config import BradleyTerryRewardConfig
    from .training.guards import NonFiniteLossError
    from .training.model_config import BradleyTerryModelConfig
    from .training.packing import PackedPairCollator
    from .training.planning import MemoryPlan, plan_memory
    from .training.qlora import add_lora, load_qlora_model
    from .training.script_arguments import BradleyTerryScriptArguments
    from .training.trainer import BradleyTerryRewardTrainer
    from .validation import TrainingSetupError
