"""`AutoModelForBradleyTerry`: a sequence-classification model whose head always has 2 labels."""

import functools
import inspect
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .safe_loading import load_adapter, safe_pretrained_kwargs
from .tokenizer import bind_pad, eos_ids_of, load_tokenizer
from .upstream import import_internal, require_attributes

logger = logging.getLogger(__name__)

ID2LABEL = {0: "unused", 1: "reward"}
"""Written explicitly into every config: transformers 5 omits `num_labels` from `config.json` when it
equals the default 2, so the labels say it instead. Label 1 is the reward (see `bt_reward`)."""

HEAD_NAMES = ("score", "classifier")
"""Attribute names of sequence-classification heads in transformers (decoders: `score`; encoders: `classifier`)."""

_HUB_KWARGS = ("revision", "cache_dir", "token", "subfolder", "trust_remote_code", "local_files_only", "gguf_file")


def single_eos_id(eos_token_id: int | list[int] | None) -> int | None:
    """The eos id used as the default pad id: configs may list several eos ids (Llama-3.1-Instruct lists
    `[128001, 128008, 128009]`); the first, the base model's end-of-text, is taken."""
    if isinstance(eos_token_id, (list, tuple)):
        return eos_token_id[0] if eos_token_id else None
    return eos_token_id


def configure_bradley_terry(config: PretrainedConfig) -> PretrainedConfig:
    """Make a config describe a Bradley-Terry reward model, in place.

    Args:
        config (`PretrainedConfig`): any sequence-classification-capable model config.

    Returns:
        `PretrainedConfig`: the same object with `num_labels == 2`, `id2label`/`label2id` set explicitly, and
        `pad_token_id` set to the (first) eos id when it was unset.
    """
    config.num_labels = 2
    config.id2label = dict(ID2LABEL)
    config.label2id = {label: index for index, label in ID2LABEL.items()}
    text_config = config.get_text_config()
    if text_config.pad_token_id is None:
        text_config.pad_token_id = single_eos_id(text_config.eos_token_id)
    return config


def head_of(model: torch.nn.Module) -> str:
    """Name of the classification head attribute of a sequence-classification model."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has none of the head attributes {HEAD_NAMES}")


@contextmanager
def meta_device() -> Iterator[None]:
    """Build models on the meta device: their modules, keys and shapes, no weights.

    Also under DeepSpeed ZeRO-3 (training arguments with a ZeRO-3 config), where transformers' `from_config` would
    build the model inside `deepspeed.zero.Init` and then gather its empty weights to initialise them, which fails
    ("Cannot copy out of meta tensor; no data!"): transformers' own marker that zero.Init is already taken care of
    (`set_zero3_state`) skips it, as a meta model has nothing to partition.
    """
    zero_init_taken_care_of = import_internal("transformers", "transformers.modeling_utils", "set_zero3_state")
    with torch.device("meta"), zero_init_taken_care_of():
        yield


def head_name(config: PretrainedConfig) -> str:
    """Name of the classification head of the architecture, found on the meta device (no weights)."""
    with meta_device():
        return head_of(AutoModelForSequenceClassification.from_config(config))


def head_output_layer(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The layer of the classification head whose rows are the logits, and its name in the model's state dict.

    Returns:
        (`name`, `layer`): `("score", model.score)` for decoders; for an encoder head with several layers (RoBERTa's
        `classifier.dense` then `classifier.out_proj`), the last `nn.Linear`, e.g. `"classifier.out_proj"`. Row `i`
        of its weight (and bias) gives logit `i`.
    """
    head = head_of(model)
    linears = [(name, module) for name, module in getattr(model, head).named_modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"the head {head!r} of {type(model).__name__} has no linear layer")
    name, layer = linears[-1]
    return (f"{head}.{name}" if name else head), layer


@torch.no_grad()
def zero_unused_row(tensor: torch.Tensor) -> torch.Tensor:
    """Set row 0 of a 2-label head's output weight or bias to zero, in place, and return the tensor.

    Row 0 gives logit 0: zero, logit 0 is exactly 0 for every input, so softmax over both logits is
    `sigmoid(reward)` and `logits.tolist()` compares by the reward. Row 1 (the reward) is unchanged. Every
    checkpoint bt-peft writes has it so (merges, exports, an imported 1-label head)."""
    tensor[0].zero_()
    return tensor


def zero_unused_logit(model: torch.nn.Module) -> None:
    """`zero_unused_row` on the weight and bias of the head's output layer of `model`, in place."""
    _, layer = head_output_layer(model)
    for parameter in (layer.weight, layer.bias):
        if parameter is not None:
            zero_unused_row(parameter)


@torch.no_grad()
def widen_single_score_head(model: PreTrainedModel) -> None:
    """Turn a 1-label reward head (TRL's `RewardTrainer`, OpenRLHF) into the 2-label Bradley-Terry head, in place.

    The output layer `(1, hidden)` becomes `(2, hidden)` (same dtype and device): row 1 is the old row, so
    `logits[:, 1]` is the model's reward exactly, and row 0 is zero. `config.num_labels` becomes 2 (the caller
    sets the labels with `configure_bradley_terry`). Raises `ValueError` for a quantized or multi-output head.
    """
    name, layer = head_output_layer(model)
    if type(layer) is not torch.nn.Linear or layer.out_features != 1:
        raise ValueError(f"cannot import the head {name} ({type(layer).__name__}, {layer.out_features} outputs): "
                         "expected a plain nn.Linear with 1 output")
    wide = torch.nn.Linear(layer.in_features, 2, bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype)
    for target, source in ((wide.weight, layer.weight), (wide.bias, layer.bias)):
        if source is not None:
            target[1] = source[0]
            zero_unused_row(target)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, wide)
    model.config.num_labels = 2
    if hasattr(model, "num_labels"):
        model.num_labels = 2


def check_pad_positions(config: PretrainedConfig, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    """Refuse a padded batch whose padding is not `config.pad_token_id`.

    Transformers' sequence-classification pooling reads the rightmost token that is not `config.pad_token_id`; a
    batch padded with another token (e.g. an adapter's tokenizer pads with `<|endoftext|>` while the base config
    says eos) would be scored at a padding position on right padding. Only 2-D attention masks are checked (the
    packed training batches carry a 4-D mask).

    Raises:
        `ValueError` naming both ids when a position with `attention_mask == 0` holds another id than the pad id.
    """
    pad = config.get_text_config().pad_token_id
    if input_ids is None or attention_mask is None or pad is None or attention_mask.shape != input_ids.shape:
        return
    wrong = (attention_mask == 0) & (input_ids != pad)
    if wrong.any():
        raise ValueError(
            f"the batch is padded with token id {input_ids[wrong][0].item()} but model.config.pad_token_id is {pad}: "
            "the reward would be read at a padding position. Set model.config.pad_token_id = tokenizer.pad_token_id "
            "(or load an adapter directory with AutoModelForBradleyTerry.from_pretrained(adapter_dir), which does)"
        )


@torch.no_grad()
def zero_head(model: PreTrainedModel) -> None:
    """Set every weight (and bias) of the classification head to zero, in place.

    A new head starts at zero: every reward is 0 and the first loss is exactly ln 2, instead of a random
    projection of the last hidden state that training must first unlearn (SmolLM2-135M's final hidden states have
    norms near 50, so transformers' normal(0, 0.02) head starts with reward gaps of std ~0.7 and a first loss of
    0.70 to 0.86 depending on the seed). The gradient of the Bradley-Terry loss reaches only row 1 (the reward), so
    row 0 stays exactly zero through training: tools that read both logits (softmax, `logits.tolist()`) see
    `(0, reward)`. The body gets gradients from the second step on, once the head has moved.
    """
    for parameter in getattr(model, head_of(model)).parameters():
        parameter.zero_()


def forget_key_mapping(model: PreTrainedModel, key_mapping: dict[str, str]) -> None:
    """Drop the renamings of `key_mapping` from those `save_pretrained` reverts, in place: transformers keeps the
    `key_mapping` a model was loaded with and saves its weights under the checkpoint's names again, while an imported
    OpenRLHF value head is this model's own head from then on, saved under its name (`score`)."""
    require_attributes(model, ("_weight_conversions",), "transformers.PreTrainedModel.from_pretrained", "transformers")
    model._weight_conversions = [conversion for conversion in model._weight_conversions
                                 if not set(getattr(conversion, "source_patterns", ())) & key_mapping.keys()]


class UntrainedHeadError(ValueError):
    """A checkpoint loaded as a trained reward model has no weights for its reward head: the head would be new and
    zero, and every reward 0.0 (a causal LM, a head under another name, a head with another number of labels)."""


def untrained_head_error(path: str | os.PathLike, head: str, info: dict) -> UntrainedHeadError:
    """The `UntrainedHeadError` of checkpoint `path`, naming the head expected (`head`) and what the checkpoint holds
    instead, from transformers' loading report `info`: a head of another shape (`mismatched_keys`), else the
    weights the model did not use (`unexpected_keys`, e.g. `lm_head.weight` of a causal LM)."""
    mismatched = [f"{key} of shape {tuple(saved)}" for key, saved, _ in info["mismatched_keys"] if key.split(".", 1)[0] == head]
    unused = sorted(info["unexpected_keys"])
    found = ", ".join(mismatched) or (", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
                                      if unused else "no head weights")
    hint = (' (an OpenRLHF value head: add "value_head_prefix": "value_head" to its config.json)'
            if any(key.startswith("value_head.") for key in unused) else "")
    return UntrainedHeadError(
        f"{path} is not a trained reward model: expected the reward head {head!r} ({head}.weight with 1 or 2 rows), "
        f"found {found}{hint}. Its new head would give every text the reward 0.0. Load a merged checkpoint, an "
        "adapter directory or a reward checkpoint (pass allow_new_head=True for an untrained baseline)"
    )


class BradleyTerrySaveMixin:
    """Mixed into the concrete model class that `AutoModelForBradleyTerry` returns, so that the
    Bradley-Terry `save_pretrained` runs on the object users hold (in HALOs it is dead code, because
    `from_pretrained` returns the concrete architecture class)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        save_function: Callable = torch.save,
        **kwargs: Any,
    ) -> None:
        """Save in safetensors with `num_labels=2`, explicit `id2label` and `pad_token_id` kept.

        Args:
            save_directory (`str`): target directory.
            is_main_process (`bool`): only the main process writes (distributed training).
            state_dict (`dict`, *optional*): weights to save instead of the model's own.
            save_function (`Callable`): accepted for HALOs compatibility; transformers 5 always writes
                safetensors, so any other value is refused rather than silently ignored.
            **kwargs: passed on to `PreTrainedModel.save_pretrained` (e.g. `max_shard_size`, `push_to_hub`).
        """
        if save_function is not torch.save:
            raise ValueError("save_function is not supported: checkpoints are always written as safetensors")
        configure_bradley_terry(self.config)
        super().save_pretrained(save_directory, is_main_process=is_main_process, state_dict=state_dict, **kwargs)


_CLASS_PREFIX = "BradleyTerry_"


def _bradley_terry_class(cls: type) -> type:
    """The Bradley-Terry subclass of an architecture class, made once. It keeps the architecture's `__name__`
    (what `config.architectures` records) and is reachable by pickle as `bt_peft.modeling.BradleyTerry_<name>`."""
    qualname = _CLASS_PREFIX + cls.__name__
    if qualname not in globals():
        namespace = {"__module__": __name__, "__qualname__": qualname, "forward": _checked_forward(cls.forward)}
        globals()[qualname] = type(cls.__name__, (BradleyTerrySaveMixin, cls), namespace)
    return globals()[qualname]


def _checked_forward(forward: Callable) -> Callable:
    """The architecture's `forward` with `check_pad_positions` first; same signature (tools inspect it)."""
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def checked(self, *args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind_partial(self, *args, **kwargs).arguments
        check_pad_positions(self.config, arguments.get("input_ids"), arguments.get("attention_mask"))
        return forward(self, *args, **kwargs)

    return checked


def __getattr__(name: str) -> type:
    """Rebuild a Bradley-Terry class on first lookup in a new process (unpickling)."""
    if name.startswith(_CLASS_PREFIX):
        import transformers

        return _bradley_terry_class(getattr(transformers, name.removeprefix(_CLASS_PREFIX)))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_bradley_terry(model: PreTrainedModel) -> PreTrainedModel:
    """Give a loaded sequence-classification model the Bradley-Terry `save_pretrained`, in place.

    The model keeps its architecture class as a base (and its class name, which `config.architectures`
    records), so `isinstance` checks, PEFT and other tools see the same model.
    """
    if not isinstance(model, BradleyTerrySaveMixin):
        model.__class__ = _bradley_terry_class(type(model))
    configure_bradley_terry(model.config)
    return model


class AutoModelForBradleyTerry(AutoModelForSequenceClassification):
    """`AutoModelForSequenceClassification` whose head always has 2 labels; the reward is `logits[:, 1]`.

    Example:
        >>> model = AutoModelForBradleyTerry.from_pretrained("meta-llama/Meta-Llama-3-8B", dtype=torch.bfloat16)
        >>> model.config.num_labels
        2
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, allow_pickle: bool = False,
                        allow_new_head: bool = True, **kwargs: Any) -> PreTrainedModel:
        """Load a 2-label reward model from a causal-LM checkpoint (new head), a reward checkpoint, or an adapter.

        Args:
            pretrained_model_name_or_path (`str`): Hub model id, local checkpoint directory, or a local adapter
                directory (holding `adapter_config.json`, as `trainer.save_model` writes it).
            *model_args: passed on to the model's `__init__`.
            allow_pickle (`bool`): load pickle weights (`pytorch_model.bin`); off by default, such a checkpoint is
                refused with a `PickleCheckpointError` (see `bt_peft.safe_loading`).
            allow_new_head (`bool`): give a checkpoint without reward head weights (a causal LM) a new zero head, as
                training starts; False (for scoring) raises `UntrainedHeadError` instead, naming the head expected and
                what was found. An adapter directory's head comes from the adapter either way.
            **kwargs: passed on to `AutoModelForSequenceClassification.from_pretrained` (`dtype`/`torch_dtype`,
                `attn_implementation`, `quantization_config`, `device_map`, …). `num_labels` and the label
                fields of `config` are overridden: the head always has 2 labels.

        Returns:
            `PreTrainedModel`: the concrete architecture (e.g. `LlamaForSequenceClassification`) with
            `config.num_labels == 2`, `config.pad_token_id` set (the eos id when it was unset), and the
            Bradley-Terry `save_pretrained`; its `forward` refuses a batch padded with another id than
            `config.pad_token_id` (`check_pad_positions`). By checkpoint:

            - a causal LM (no head): a new 2-label head set to zero (`zero_head`), or `UntrainedHeadError` without
              `allow_new_head`;
            - a 1-label reward model (`num_labels: 1`: TRL's `RewardTrainer`, a `bt-peft export --format scalar`)
              or an OpenRLHF reward model (its 1-output head named by `value_head_prefix` in `config.json`, e.g. the
              older releases' `value_head`): its reward is kept, as row 1 of the head, row 0 zero
              (`widen_single_score_head`);
            - a head with another number of labels: a new zero head, with a warning (`UntrainedHeadError` without
              `allow_new_head`);
            - a 2-label reward checkpoint: loaded as it is;
            - an adapter directory: its base (`base_model_name_or_path`) loaded by these rules with `**kwargs`,
              then the adapter and its head (`PeftModel`, like peft's `AutoPeftModel*`), and
              `config.pad_token_id` set to the pad id of the tokenizer saved with the adapter (the base's tokenizer
              with bt-peft's pad rule, `choose_pad_token`, when the adapter has none).

            With `output_loading_info=True`, `(model, loading_info)` as transformers returns it (of the base, for an
            adapter). `trust_remote_code` is False unless passed: a checkpoint that needs custom code raises
            transformers' `ValueError` instead of running it.
        """
        if (Path(pretrained_model_name_or_path) / "adapter_config.json").is_file():
            return cls._from_adapter(pretrained_model_name_or_path, *model_args, allow_pickle=allow_pickle, **kwargs)
        kwargs = safe_pretrained_kwargs(pretrained_model_name_or_path, allow_pickle, kwargs)
        kwargs.pop("num_labels", None)
        config = kwargs.pop("config", None)
        if config is None:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        else:
            config = config.__class__.from_dict(config.to_dict())
        openrlhf_prefix = getattr(config, "value_head_prefix", None)  # OpenRLHF's name of its 1-output value head
        head = None if openrlhf_prefix is None else head_name(config)
        renamed_head = openrlhf_prefix not in (None, head)
        single_score = config.num_labels == 1 or renamed_head
        if renamed_head:
            kwargs["key_mapping"] = {rf"^{re.escape(openrlhf_prefix)}\.": f"{head}."} | kwargs.get("key_mapping", {})
            del config.value_head_prefix  # the imported head is `head`, as a re-saved checkpoint stores it
        if single_score:
            config.num_labels = 1
            config.problem_type = None  # the export writes "regression"; the 2-label model is not one
        else:
            if config.num_labels != 2:
                logger.warning("%s has a %d-label head; a new 2-label head is initialised", pretrained_model_name_or_path,
                               config.num_labels)
                kwargs["ignore_mismatched_sizes"] = True
            configure_bradley_terry(config)
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, output_loading_info=True, **kwargs
        )
        head = head_of(model)
        new_weights = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
        if any(key.split(".", 1)[0] == head for key in new_weights):
            if not allow_new_head:
                raise untrained_head_error(pretrained_model_name_or_path, head, info)
            zero_head(model)
        if single_score:
            widen_single_score_head(model)
        if renamed_head:
            forget_key_mapping(model, kwargs["key_mapping"])
        model = as_bradley_terry(model)
        return (model, info) if return_info else model

    @classmethod
    def _from_adapter(cls, adapter_dir: str | os.PathLike, *model_args: Any, allow_pickle: bool = False, **kwargs: Any):
        """Base + adapter + head of a local adapter directory, with the adapter tokenizer's pad id (see
        `from_pretrained`)."""
        from peft import PeftConfig

        return_info = kwargs.pop("output_loading_info", False)
        base = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
        model, info = cls.from_pretrained(base, *model_args, allow_pickle=allow_pickle, output_loading_info=True, **kwargs)
        model = load_adapter(model, adapter_dir, allow_pickle)
        saved_tokenizer = (Path(adapter_dir) / "tokenizer_config.json").is_file()  # trainer.save_model writes one
        tokenizer = load_tokenizer(adapter_dir if saved_tokenizer else base, eos_ids=eos_ids_of(model.config))
        bind_pad(model, tokenizer)
        return (model, info) if return_info else model

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        """Build a 2-label reward model from a config (used for tests and planning): a random body and, like every
        new head, a zero head (`zero_head`)."""
        config = configure_bradley_terry(config.__class__.from_dict(config.to_dict()))
        model = super().from_config(config, **kwargs)
        zero_head(model)
        return as_bradley_terry(model)


def module_matches(name: str, targets: Iterable[str]) -> bool:
    """peft's rule for a target name: the module `name` is matched when it equals a target or ends in `.target`."""
    return any(name == target or name.endswith("." + target) for target in targets)
