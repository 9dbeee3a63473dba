"""`BradleyTerryRewardTrainer`: TRL's `RewardTrainer` on a 2-label head, reward `logits[:, 1]`."""

import contextlib
import logging
import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from peft import PeftConfig
from transformers import AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import get_config_model_id

from ..data import prepare_preference_dataset
from ..loss import bradley_terry_loss
from ..modeling import configure_bradley_terry
from ..quantization import load_reward_model
from ..reward import bt_reward
from ..tokenizer import choose_pad_token, eos_ids_of, record_training_settings
from ..upstream import require_call, require_methods, upstream_error
from ..validation import validate_training_setup
from .checkpointing import SafeCheckpointMixin
from .config import packing_options
from .guards import NonFiniteGuard, NonFiniteGuardMixin
from .packing import PackedPairCollator, packed_logits, packing_unsupported_reason
from .qlora import FP16_WARNING, add_lora

logger = logging.getLogger(__name__)

# TRL internals with no public equivalent; each check fails at import, naming the TRL version, if TRL changes it.
# `_prepare_dataset` is overridden so that every dataset TRL prepares (in `__init__` and `evaluate`) goes through
# bt-peft's preparation (truncation from the left, no eos appended, the report) instead of TRL's.
require_methods(RewardTrainer, {"_prepare_dataset": ("dataset", "processing_class", "args", "dataset_name")}, "trl")
require_call(RewardTrainer, "__init__", ("_prepare_dataset",), "trl")
require_call(RewardTrainer, "evaluate", ("_prepare_dataset",), "trl")


@contextlib.contextmanager
def _shown_to_trl_as_single_label(model: torch.nn.Module) -> Iterator[None]:
    """TRL's `RewardTrainer.__init__` refuses `num_labels != 1`; the loss is ours, so only that check reads it.
    The model's own config says 1 label for the duration of the call and 2 again afterwards (no global state).
    TRL has no public way to skip the check; `pyproject.toml` bounds trl to the tested minor version."""
    config = model.config
    config.num_labels = 1
    try:
        yield
    finally:
        configure_bradley_terry(config)


@contextlib.contextmanager
def _lora_dropout_kept(model: torch.nn.Module) -> Iterator[None]:
    """TRL's `disable_dropout=True` (its default) sets `p = 0` on every `nn.Dropout` of the model, LoRA's included,
    while the LoRA config (`lora_dropout`, the recipe's 0.05) says otherwise. The base model's dropout stays off as TRL
    wants; each LoRA dropout gets its configured rate back after the call (set `lora_dropout=0` for none)."""
    from peft.tuners.lora import LoraLayer

    rates = [(dropout, dropout.p) for layer in model.modules() if isinstance(layer, LoraLayer)
             for dropout in layer.lora_dropout.values() if isinstance(dropout, torch.nn.Dropout)]
    try:
        yield
    finally:
        for dropout, rate in rates:
            dropout.p = rate


class BradleyTerryRewardTrainer(NonFiniteGuardMixin, SafeCheckpointMixin, RewardTrainer):
    """`trl.RewardTrainer` for 2-label Bradley-Terry reward models.

    Takes the same arguments as `RewardTrainer` (a `RewardConfig`, TRL's standard and conversational
    preference datasets with explicit or implicit prompt, pre-tokenized `chosen_ids`/`rejected_ids`, an optional
    `margin` column) plus raw HH-RLHF text pairs. Differences from TRL:

    - `model`: a model from `load_qlora_model`, any 2-label sequence-classification model, or a name/path,
      which is loaded with `AutoModelForBradleyTerry` (`args.model_init_kwargs`, `quantization_config`) and
      wrapped with `peft_config` when given (TRL's convention); the head is kept out of 4-bit, in fp32, and
      trained and saved with the adapter.
    - loss: `-logsigmoid(r_c - r_r - margin)` (+ `center_rewards_coefficient * mean((r_c + r_r) ** 2)`) with
      `r = bt_reward(logits)`.
    - pad token: an unused special token distinct from eos where the tokenizer has one (`choose_pad_token`),
      so the reward is read at the true last token in training and in any tool serving the checkpoint.
    - eos: TRL appends one to plain texts (not to conversations); bt-peft appends none by default, the form TRL's
      GRPO/RLOO score, and with `BradleyTerryRewardConfig.append_eos` ends every sequence with one (OpenRLHF's form),
      recorded in the saved tokenizer.
    - data: pairs longer than `max_length` are kept, their prompt cut from the left; what was truncated or
      skipped is printed and kept in `preparation_reports`.
    - trainable parameters keep the dtype the model was given (TRL casts QLoRA adapters and head to bf16).
    - LoRA dropout stays at its configured rate; `args.disable_dropout` (TRL's default) turns off the base model's
      dropout only (TRL turns off every `nn.Dropout`, LoRA's included).
    - batches: shared-prefix packing and padding-free rows by default on decoder-only models (`training.packing`),
      switched by `BradleyTerryRewardConfig.packing`/`padding_free` (a plain `RewardConfig` keeps both on); other
      models, or a `data_collator` you pass, get the batches as before.
    - saving and resuming (`SafeCheckpointMixin`): no pickle anywhere, `save_model(dir, overwrite=False)` atomic,
      `train(resume_from_checkpoint=True)` from the last complete checkpoint, exactly.
    - a NaN/inf loss or gradient raises `NonFiniteLossError` before the optimizer step (`NonFiniteGuard`).

    Logged in train and eval: `accuracy`, `margin`, `chosen_reward`, `rejected_reward`, `num_tokens`.
    """

    def __init__(
        self,
        model: "str | PreTrainedModel",
        args: RewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
        **kwargs: Any,
    ):
        if isinstance(train_dataset, IterableDataset):
            raise TypeError("BradleyTerryRewardTrainer needs a map-style datasets.Dataset (streaming is not supported)")
        args = args or RewardConfig(output_dir="bt-reward-model")
        refuse_ignored_settings(args)
        validate_training_setup(args, model, peft_config, quantization_config is not None, processing_class,
                                args.trust_remote_code)
        if args.fp16:
            warnings.warn(FP16_WARNING, stacklevel=2)
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = load_reward_model(model, quantization_config, **init_kwargs)
        if peft_config is not None:
            model = add_lora(model, peft_config)
        if model.config.num_labels != 2:
            raise ValueError(
                f"BradleyTerryRewardTrainer needs a 2-label head, the model has num_labels={model.config.num_labels}: "
                "load it with AutoModelForBradleyTerry or load_qlora_model"
            )
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(
                get_config_model_id(model.config), trust_remote_code=args.trust_remote_code
            )
        processing_class.pad_token = choose_pad_token(processing_class, eos_ids_of(model.config))
        record_training_settings(processing_class, args, model)
        if data_collator is None:
            data_collator = packed_collator(model, args, processing_class.pad_token_id)
        self.preparation_reports = {}
        trainable = trainable_data(model)
        with _shown_to_trl_as_single_label(model), _lora_dropout_kept(model):
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                **kwargs,
            )
        # TRL casts the trainable parameters of a quantized model to bf16 (no public switch); give back the originals
        restore_trainable_dtypes(self.model, trainable)
        self.pair_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # logged means, see `log`
        self.train_tokens = 0
        config = self.accelerator.parallelism_config  # tensor-parallel ranks see the same batch: count it once
        self.tensor_parallel_size = config.tp_size if config is not None else 1
        self.non_finite_guard = NonFiniteGuard()
        self.add_callback(self.non_finite_guard)

    def _prepare_dataset(self, dataset: Dataset, processing_class, args: RewardConfig, dataset_name: str) -> Dataset:
        prepared, report = prepare_preference_dataset(dataset, processing_class, args.max_length, dataset_name)
        self.preparation_reports[dataset_name] = report
        if args.process_index == 0:
            print(f"bt-peft data: {report}")
        return prepared

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if "chosen_index" in inputs:  # a PackedPairCollator batch
            outputs = SequenceClassifierOutput(logits=packed_logits(model, inputs))
            real_tokens = inputs["pair_ids"] >= 0
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            real_tokens = inputs["attention_mask"]
        chosen, rejected = bt_reward(outputs.logits).float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient)

        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(real_tokens.sum()).sum().item()
            self.train_tokens += tokens // self.tensor_parallel_size
        self.pair_metrics[mode]["num_tokens"] = [self.train_tokens]
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            chosen_all, rejected_all = gather(chosen.detach()), gather(rejected.detach())
            metrics = self.pair_metrics[mode]  # one value per pair, so the logged means are exact over pairs
            metrics["accuracy"].extend((chosen_all > rejected_all).float().tolist())
            metrics["margin"].extend((chosen_all - rejected_all).tolist())
            metrics["chosen_reward"].extend(chosen_all.tolist())
            metrics["rejected_reward"].extend(rejected_all.tolist())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the metrics gathered since the last log (`eval_`-prefixed in evaluation) to `logs`."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{key}": sum(values) / len(values) for key, values in self.pair_metrics[mode].items()})
        self.pair_metrics[mode].clear()
        super().log(logs, start_time)


IGNORED_SETTINGS = {
    "pad_token": "bt-peft picks the pad token (choose_pad_token: an unused special token, never eos) and sets "
                 "model.config.pad_token_id to it; another pad token in TRL's batches would move the reward position",
    "eos_token": "bt-peft's data preparation appends no eos, or with append_eos the eos of the tokenizer you pass "
                 "(set its eos_token instead), so it would change nothing",
    "dataset_num_proc": "bt-peft prepares the pairs in one process (prepare_preference_dataset)",
}
"""`RewardConfig` fields that TRL reads but bt-peft's trainer replaces: setting one raises instead of doing nothing."""


def refuse_ignored_settings(args: RewardConfig) -> None:
    """Raise `ValueError` naming each field of `IGNORED_SETTINGS` that `args` sets, and why it would do nothing."""
    problems = [f"{name}={getattr(args, name)!r}: {reason}" for name, reason in IGNORED_SETTINGS.items()
                if getattr(args, name, None) is not None]
    if problems:
        raise ValueError("settings BradleyTerryRewardTrainer does not use: " + "; ".join(problems))


def trainable_data(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The data of each trainable parameter of `model`, by name: what `restore_trainable_dtypes` gives back."""
    return {name: param.data for name, param in model.named_parameters() if param.requires_grad}


def restore_trainable_dtypes(model: torch.nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Give each trainable parameter of `model` its value and dtype from `originals` (`trainable_data` taken before
    TRL's `__init__` cast them), on the device the parameter is on now: the Trainer may have moved the model in
    between (a model loaded without a device map goes to the GPU), and putting the snapshot's CPU tensors back would
    fail the first step on a device mismatch.

    Raises:
        `UpstreamChangedError` when a parameter of `originals` is no longer in `model` (TRL renamed or replaced it).
    """
    parameters = dict(model.named_parameters())
    if not originals.keys() <= parameters.keys():
        raise upstream_error("trl", "RewardTrainer keeping the parameter names of the model it is given")
    for name, data in originals.items():
        parameters[name].data = data.to(parameters[name].device)


def packed_collator(model: torch.nn.Module, args: RewardConfig, pad_token_id: int) -> PackedPairCollator | None:
    """The batch collator that `args` asks for (`BradleyTerryRewardConfig.packing`/`padding_free`; a plain
    `RewardConfig`: both on), or None for TRL's padded batches: when both are off, or when the model cannot take
    the packed mask (logged once, with the reason)."""
    packing, padding_free, max_tokens_per_row = packing_options(args)
    if not (packing or padding_free):
        return None
    reason = packing_unsupported_reason(model)
    if reason is not None:
        logger.warning("bt-peft: shared-prefix packing is off, using standard padded batches: %s", reason)
        return None
    return PackedPairCollator(pad_token_id, packing, padding_free, max_tokens_per_row)
