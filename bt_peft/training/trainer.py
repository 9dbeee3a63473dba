"""`BradleyTerryRewardTrainer`: a `transformers.Trainer` for 2-label Bradley-Terry reward models, reward
`logits[:, 1]`, taking `trl.RewardTrainer`'s arguments, configuration and dataset formats."""

import logging
import warnings
from collections import defaultdict
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, Trainer, TrainingArguments, set_seed
from transformers.modeling_outputs import SequenceClassifierOutput
from trl.trainer.reward_trainer import DataCollatorForPreference

from ..data import prepare_preference_dataset
from ..loss import bradley_terry_loss
from ..quantization import load_reward_model
from ..reward import bt_reward
from ..tokenizer import bind_pad, choose_pad_token, eos_ids_of, record_training_settings
from ..validation import refuse_settings, validate_training_setup
from .checkpointing import SafeCheckpointMixin, TrainingStateRestorer
from .config import BradleyTerryRewardConfig, packing_options, reward_setting
from .guards import NonFiniteGuard, NonFiniteGuardMixin
from .packing import PackedPairCollator, packed_logits, packing_unsupported_reason
from .qlora import FP16_WARNING, add_lora

logger = logging.getLogger(__name__)


class BradleyTerryRewardTrainer(NonFiniteGuardMixin, SafeCheckpointMixin, Trainer):
    """A `transformers.Trainer` for 2-label Bradley-Terry reward models, called as `trl.RewardTrainer` is.

    Takes `RewardTrainer`'s arguments (a `trl.RewardConfig` or `BradleyTerryRewardConfig`; a plain
    `TrainingArguments` works too, with `RewardConfig`'s defaults for the fields it lacks, see
    `config.reward_setting`), TRL's standard and conversational preference datasets with explicit or implicit
    prompt, pre-tokenized `chosen_ids`/`rejected_ids`, an optional `margin` column, plus raw HH-RLHF text pairs.
    It runs no TRL code:

    - `model`: a model from `load_qlora_model`, any 2-label sequence-classification model, or a name/path,
      which is loaded with `AutoModelForBradleyTerry` (`args.model_init_kwargs`, `quantization_config`) and
      wrapped with `peft_config` when given (TRL's convention); the head is kept out of 4-bit, in fp32, and
      trained and saved with the adapter. `processing_class` defaults to the tokenizer of `model.config.name_or_path`.
    - loss: `-logsigmoid(r_c - r_r - margin)` (+ `center_rewards_coefficient * mean((r_c + r_r) ** 2)`) with
      `r = bt_reward(logits)`.
    - pad token: an unused special token distinct from eos where the tokenizer has one (`choose_pad_token`),
      so the reward is read at the true last token in training and in any tool serving the checkpoint.
    - eos: TRL appends one to plain texts (not to conversations); bt-peft appends none by default, the form TRL's
      GRPO/RLOO score, and with `BradleyTerryRewardConfig.append_eos` ends every sequence with one (OpenRLHF's form),
      recorded in the saved tokenizer.
    - data (train and eval sets, a dict of eval sets, datasets given to `evaluate`): pairs longer than
      `max_length` are kept, their prompt cut from the left; what was truncated or skipped is logged and kept in
      `preparation_reports`. The prepared datasets hold only the columns the batches need, so `args`'s
      `remove_unused_columns` is set to False.
    - trainable parameters keep the dtype the model was given (TRL casts QLoRA adapters and head to bf16).
    - `disable_dropout` (default on, as TRL) turns off the base model's dropout; LoRA dropout keeps its configured
      rate (TRL turns off every `nn.Dropout`, LoRA's included).
    - batches: shared-prefix packing and padding-free rows by default on decoder-only models (`training.packing`),
      switched by `BradleyTerryRewardConfig.packing`/`padding_free` (a plain `RewardConfig` keeps both on); other
      models, or both switched off, get TRL's padded batches (`DataCollatorForPreference`, public, documented); a
      `data_collator` you pass is used as given.
    - saving and resuming (`SafeCheckpointMixin`): no pickle anywhere, `save_model(dir, overwrite=False)` atomic,
      `train(resume_from_checkpoint=True)` from the last complete checkpoint, exactly. `train` runs the Trainer
      with `save_only_model=True`: bt-peft writes the training state itself.
    - a NaN/inf loss or gradient raises `NonFiniteLossError` before the optimizer step (`NonFiniteGuard`).

    Logged in train and eval: `accuracy`, `margin`, `chosen_reward`, `rejected_reward`, `num_tokens`.
    """

    def __init__(
        self,
        model: "str | PreTrainedModel",
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
        **kwargs: Any,
    ):
        if train_dataset is None:
            raise ValueError("BradleyTerryRewardTrainer needs a train_dataset")
        if isinstance(train_dataset, IterableDataset):
            raise TypeError("BradleyTerryRewardTrainer needs a map-style datasets.Dataset (streaming is not supported)")
        args = args or BradleyTerryRewardConfig(output_dir="bt-reward-model")
        refuse_ignored_settings(args)
        trust_remote_code = reward_setting(args, "trust_remote_code")
        validate_training_setup(args, model, peft_config, quantization_config is not None, processing_class,
                                trust_remote_code)
        if args.fp16:
            warnings.warn(FP16_WARNING, stacklevel=2)
        set_seed(args.seed)  # before the head and the adapter are initialized, as TRL does
        if isinstance(model, str):
            init_kwargs = dict(reward_setting(args, "model_init_kwargs") or {})
            init_kwargs.setdefault("trust_remote_code", trust_remote_code)
            model = load_reward_model(model, quantization_config, **init_kwargs)
        if peft_config is not None:
            model = add_lora(model, peft_config)
        if model.config.num_labels != 2:
            raise ValueError(
                f"BradleyTerryRewardTrainer needs a 2-label head, the model has num_labels={model.config.num_labels}: "
                "load it with AutoModelForBradleyTerry or load_qlora_model"
            )
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config.name_or_path, trust_remote_code=trust_remote_code)
        processing_class.pad_token = choose_pad_token(processing_class, eos_ids_of(model.config))
        bind_pad(model, processing_class)
        record_training_settings(processing_class, getattr(args, "append_eos", False), reward_setting(args, "max_length"),
                                 model)
        if isinstance(model, PeftModel) and getattr(args, "gradient_checkpointing", None):
            model.enable_input_require_grads()  # as TRL: the frozen embeddings' output must carry the gradient
        if reward_setting(args, "disable_dropout"):
            disable_base_model_dropout(model)
        if data_collator is None:
            data_collator = pair_collator(model, args, processing_class.pad_token_id)
        args.remove_unused_columns = False  # the prepared datasets hold only what the batches need
        self.preparation_reports = {}
        train_dataset = prepare_reward_dataset(train_dataset, "train", processing_class, args, self.preparation_reports)
        eval_dataset = prepare_eval_datasets(eval_dataset, processing_class, args, self.preparation_reports)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("BradleyTerryRewardTrainer does not support nn.DataParallel (several GPUs visible to one "
                             "process): launch with `accelerate launch` or `torchrun`, or set CUDA_VISIBLE_DEVICES")
        self.can_return_loss = True  # evaluation gets the loss from `compute_loss`: there are no labels
        self.label_names = []
        self.pair_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # logged means, see `log`
        self.train_tokens = 0
        config = self.accelerator.parallelism_config  # tensor-parallel ranks see the same batch: count it once
        self.tensor_parallel_size = config.tp_size if config is not None else 1
        self.non_finite_guard = NonFiniteGuard()
        self.add_callback(self.non_finite_guard)
        self.training_state_restorer = TrainingStateRestorer(self)
        self.add_callback(self.training_state_restorer)

    def prepare_dataset(self, dataset: Dataset, name: str) -> Dataset:
        """`prepare_reward_dataset` with this trainer's tokenizer and arguments, reported under `name`."""
        return prepare_reward_dataset(dataset, name, self.processing_class, self.args, self.preparation_reports)

    def evaluate(self, eval_dataset: Dataset | dict[str, Dataset] | str | None = None,
                 ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """`Trainer.evaluate`; a dataset (or dict of datasets) given here is prepared first, as the train set was."""
        eval_dataset = prepare_eval_datasets(eval_dataset, self.processing_class, self.args, self.preparation_reports)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if "chosen_index" in inputs:  # a PackedPairCollator batch
            outputs = SequenceClassifierOutput(logits=packed_logits(model, inputs))
            real_tokens = inputs["pair_ids"] >= 0
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            real_tokens = inputs["attention_mask"]
        chosen, rejected = bt_reward(outputs.logits).float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected, inputs.get("margin"),
                                  reward_setting(self.args, "center_rewards_coefficient"))

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
    "chat_template_path": "bt-peft uses the chat template of the tokenizer you pass: set its chat_template instead",
    "activation_offloading": "bt-peft's trainer does not offload activations (activation_checkpointing saves memory)",
}
"""`RewardConfig` fields that TRL reads but bt-peft's trainer does not: setting one (to anything but None/False)
raises instead of doing nothing."""


def refuse_ignored_settings(args: TrainingArguments) -> None:
    """Raise `ValueError` naming each field of `IGNORED_SETTINGS` that `args` sets, and why it would do nothing."""
    refuse_settings(args, {name: (getattr(args, name, None) not in (None, False), why)
                           for name, why in IGNORED_SETTINGS.items()},
                    "settings BradleyTerryRewardTrainer does not use")


def prepare_reward_dataset(dataset: Dataset, name: str, tokenizer, args: TrainingArguments,
                           reports: dict[str, Any]) -> Dataset:
    """`prepare_preference_dataset(dataset, tokenizer, max_length, name)` with the `max_length` of `args`; its report
    is logged (main process) and stored in `reports[name]`."""
    prepared, report = prepare_preference_dataset(dataset, tokenizer, reward_setting(args, "max_length"), name)
    reports[name] = report
    if args.process_index == 0:
        logger.info("bt-peft data: %s", report)
    return prepared


def prepare_eval_datasets(eval_dataset: Dataset | dict[str, Dataset] | str | None, tokenizer, args: TrainingArguments,
                          reports: dict[str, Any]) -> Dataset | dict[str, Dataset] | str | None:
    """`prepare_reward_dataset` on an eval dataset (named "eval") or on each of a dict of them (named by key); None,
    or the name of an eval set the trainer already holds (a string), as given."""
    if eval_dataset is None or isinstance(eval_dataset, str):
        return eval_dataset
    if isinstance(eval_dataset, dict):
        return {name: prepare_reward_dataset(dataset, name, tokenizer, args, reports) for name, dataset in eval_dataset.items()}
    return prepare_reward_dataset(eval_dataset, "eval", tokenizer, args, reports)


def disable_base_model_dropout(model: torch.nn.Module) -> None:
    """Set `p = 0` on every `nn.Dropout` of `model` except LoRA's (`lora_dropout` keeps its configured rate; set
    `lora_dropout=0` for none)."""
    from peft.tuners.lora import LoraLayer

    lora_dropouts = {id(dropout) for layer in model.modules() if isinstance(layer, LoraLayer)
                     for dropout in layer.lora_dropout.values()}
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and id(module) not in lora_dropouts:
            module.p = 0.0


def pair_collator(model: torch.nn.Module, args: TrainingArguments,
                  pad_token_id: int) -> PackedPairCollator | DataCollatorForPreference:
    """The batch collator that `args` asks for (`BradleyTerryRewardConfig.packing`/`padding_free`; a plain
    `RewardConfig`: both on), or TRL's padded batches (with `args.pad_to_multiple_of`): when both are off, or when
    the model cannot take the packed mask (logged once, with the reason)."""
    packing, padding_free, max_tokens_per_row = packing_options(args)
    padded = DataCollatorForPreference(pad_token_id, reward_setting(args, "pad_to_multiple_of"))
    if not (packing or padding_free):
        return padded
    reason = packing_unsupported_reason(model)
    if reason is not None:
        logger.warning("bt-peft: shared-prefix packing is off, using standard padded batches: %s", reason)
        return padded
    return PackedPairCollator(pad_token_id, packing, padding_free, max_tokens_per_row)
