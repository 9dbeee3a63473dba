"""The served model: every form `bt-peft serve MODEL` takes, loaded so that `score_ids` (the loop of `bt_peft.score`)
reads its reward."""

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..embedded import resolve_model
from ..evaluation.loading import dtype_named, load_for_scoring
from ..quantization import default_device_map


def load_served_model(
    model: str, dtype: str = "auto", device: str | None = None, load_in_4bit: bool = False
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load what `bt-peft serve MODEL` serves.

    Args:
        model (`str`): a merged checkpoint, an adapter directory (4-bit base + adapter), a 1-label scalar reward
            checkpoint (imported by `AutoModelForBradleyTerry`: its head becomes row 1, so `bt_reward` reads its
            `logits[:, 0]`; OpenRLHF's too), or any other 2-label reward checkpoint. A checkpoint without reward head
            weights (a causal LM) is refused (`UntrainedHeadError`): it would serve the constant 0.0.
        dtype (`str`): "auto" (the model's own: a checkpoint's saved dtype, an adapter's training compute dtype),
            "float32", "bfloat16" or "float16": the weights' dtype, or the 4-bit compute dtype.
        device (`str`, *optional*): "cpu", "cuda", "cuda:N"; default: this process's GPU, or the CPU.
        load_in_4bit (`bool`): load a checkpoint's body in 4-bit NF4 (an adapter's base always is).

    Returns:
        (model, tokenizer) ready for `score_ids`: a 2-label model in eval mode whose `bt_reward` is the reward, and
        the tokenizer whose pad id is `model.config.pad_token_id`.
    """
    path = resolve_model(model)
    compute_dtype = dtype_named(dtype)
    device_map = {"": device} if device else default_device_map()
    return load_for_scoring(path, compute_dtype, device_map, load_in_4bit=load_in_4bit)
