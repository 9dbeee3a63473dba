"""4-bit loading of a reward model: the NF4 quantization of training, the head kept out of it in fp32, the device
map (none under DeepSpeed ZeRO-3), and the bitsandbytes CPU repacking switched off. Used by training, scoring and the exact merge alike."""

import copy
import os
import threading

import torch
from transformers import AutoConfig, BitsAndBytesConfig, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled

from .modeling import AutoModelForBradleyTerry, head_name
from .upstream import require_attributes


def nf4_config(compute_dtype: torch.dtype, quant_storage: torch.dtype | None = None) -> BitsAndBytesConfig:
    """The 4-bit quantization of training (and of the exact merge): NF4 with double quant.

    `quant_storage` is the dtype the packed 4-bit weights are stored in: None keeps bitsandbytes' uint8. FSDP-QLoRA
    needs the dtype of the model's other parameters (the compute dtype, e.g. bf16), so that FSDP can flatten and
    shard the 4-bit weights together with them.
    """
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage,
    )


_AUTOCAST_OFF = threading.local()
"""Per thread, the autocast-disabling contexts the heads entered and have not left yet (None where autocast was off)."""


def _enter_float32(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the head: its input cast to the weight's dtype, autocast switched off until
    `_leave_float32` (under `bf16: true` accelerate's autocast would run the fp32 head's matmul in bf16)."""
    hidden = args[0].to(module.weight.dtype)
    device_type = hidden.device.type
    context = None
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        context = torch.autocast(device_type, enabled=False)
        context.__enter__()
    _AUTOCAST_OFF.__dict__.setdefault("contexts", []).append(context)
    return (hidden,) + args[1:]


def _leave_float32(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
    """Forward hook of the head, called even when its forward raises: autocast back as `_enter_float32` found it."""
    context = _AUTOCAST_OFF.contexts.pop()
    if context is not None:
        context.__exit__(None, None, None)


def keep_head_in_float32(head: torch.nn.Module) -> None:
    """Keep the head's weights in fp32 and compute it in fp32, in place: its input is cast to fp32 and autocast is off
    while it runs, so rewards are computed in full precision in training (`bf16: true` wraps the forward in autocast)
    and in scoring alike. The hooks are copied with the module, so peft's `ModulesToSaveWrapper` copy of the head
    (the one trained and saved) computes in fp32 too."""
    head.to(torch.float32)
    head.register_forward_pre_hook(_enter_float32)
    head.register_forward_hook(_leave_float32, always_call=True)


REPACKING_SWITCH = "support_avx512bf16_for_cpu"
"""The attribute that bitsandbytes' `Linear4bit.__init__` sets and reads to repack its weights for CPU inference."""


def disable_cpu_weight_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights in place on CPUs with AVX512-BF16.

    An eval-mode no-grad forward repacks them for `gemv_4bit`, which has no autograd: a backward afterwards
    gives silently wrong gradients. Returns the number of `Linear4bit` layers set.

    Raises:
        `UpstreamChangedError` (before any layer is changed) when a `Linear4bit` of the model lacks the switch,
        e.g. a bitsandbytes release renamed it: the assignment would then create a dead attribute.
    """
    import bitsandbytes as bnb

    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for layer in layers:  # each layer, before any is set: assigning a renamed attribute would do nothing, silently
        require_attributes(layer, (REPACKING_SWITCH,), f"bitsandbytes.nn.{type(layer).__qualname__}", "bitsandbytes")
    for layer in layers:
        setattr(layer, REPACKING_SWITCH, False)
    return len(layers)


def nf4_device(device: str | torch.device | None = None) -> torch.device:
    """Where the NF4 round trip of the exact merge runs: `device` when given, else this process's GPU when there is
    one (seconds for an 8B model instead of ~20 min on a 2-core CPU), else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def default_device_map() -> dict[str, int | str] | None:
    """One whole model per process: this process's GPU when there is one, else the CPU.

    None under DeepSpeed ZeRO-3 (`is_deepspeed_zero3_enabled`, set by training arguments with a ZeRO-3 config, e.g.
    `accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml`): transformers refuses any `device_map`
    there ("DeepSpeed Zero-3 is not compatible with passing a `device_map`"). Without one, a 4-bit model goes where
    bitsandbytes' quantizer puts it, this process's current GPU (accelerate sets it to the local rank) or the CPU,
    and DeepSpeed shards it when the trainer prepares it; an unquantized model is built partitioned (`zero.Init`).
    """
    if is_deepspeed_zero3_enabled():
        return None
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def load_reward_model(
    model_name_or_path: str | os.PathLike,
    quantization_config: BitsAndBytesConfig | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load `AutoModelForBradleyTerry` with its head unquantized and in fp32.

    Args:
        model_name_or_path (`str`): causal-LM or reward checkpoint (Hub id or local directory).
        quantization_config (`BitsAndBytesConfig`, *optional*): the head is added to its
            `llm_int8_skip_modules` (a copy is made; the caller's object is unchanged).
        **kwargs: passed on to `AutoModelForBradleyTerry.from_pretrained` (`dtype`, `device_map`,
            `allow_pickle`, `trust_remote_code`, …).

    Returns:
        `PreTrainedModel`: 2-label model; when quantized, CPU weight repacking is disabled (see
        `disable_cpu_weight_repacking`).
    """
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
    head = head_name(config)
    if quantization_config is not None:
        quantization_config = copy.deepcopy(quantization_config)
        skipped = list(quantization_config.llm_int8_skip_modules or [])
        quantization_config.llm_int8_skip_modules = skipped + [head] * (head not in skipped)
        kwargs["quantization_config"] = quantization_config
    model = AutoModelForBradleyTerry.from_pretrained(model_name_or_path, **kwargs)
    disable_cpu_weight_repacking(model)
    keep_head_in_float32(getattr(model, head))
    return model
