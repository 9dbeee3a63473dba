"""bt-peft: Bradley-Terry reward models with QLoRA on the Hugging Face stack.

The reward of a sequence is `logits[:, 1]` of a 2-label sequence-classification head (`bt_reward`).
"""

from .data import load_preference_file, prepare_preference_dataset
from .loss import bradley_terry_loss
from .merge import merge_and_save
from .modeling import AutoModelForBradleyTerry
from .qlora import load_qlora_model
from .reward import bt_reward
from .scoring import score
from .trainer import BradleyTerryRewardTrainer

__all__ = [
    "AutoModelForBradleyTerry",
    "BradleyTerryRewardTrainer",
    "bradley_terry_loss",
    "bt_reward",
    "load_preference_file",
    "load_qlora_model",
    "merge_and_save",
    "prepare_preference_dataset",
    "score",
]
