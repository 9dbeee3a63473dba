"""bt-peft: Bradley-Terry reward models with QLoRA on the Hugging Face stack.

The reward of a sequence is `logits[:, 1]` of a 2-label sequence-classification head (`bt_reward`).
"""

from .config import BradleyTerryRewardConfig
from .data import load_preference_file, prepare_preference_dataset
from .evaluation import evaluate_pairs
from .loading import load_for_scoring
from .loss import bradley_terry_loss
from .merge import merge_and_save
from .model_card import push_to_hub, write_model_card
from .modeling import AutoModelForBradleyTerry
from .planning import MemoryPlan, plan_memory
from .plots import plot_evaluation
from .qlora import load_qlora_model
from .reward import bt_reward
from .scoring import score, score_ids
from .trainer import BradleyTerryRewardTrainer

__all__ = [
    "AutoModelForBradleyTerry",
    "BradleyTerryRewardConfig",
    "BradleyTerryRewardTrainer",
    "MemoryPlan",
    "bradley_terry_loss",
    "bt_reward",
    "evaluate_pairs",
    "load_for_scoring",
    "load_preference_file",
    "load_qlora_model",
    "merge_and_save",
    "plan_memory",
    "plot_evaluation",
    "prepare_preference_dataset",
    "push_to_hub",
    "score",
    "score_ids",
    "write_model_card",
]
