"""`BradleyTerryModelConfig`: TRL's `ModelConfig` with the defaults of QLoRA Bradley-Terry training, each field either
honoured by `load_qlora_model` or refused by name when set to something the recipe does not do."""

from dataclasses import dataclass, field

from trl import ModelConfig

from ..validation import refuse_settings

COMPUTE_DTYPES = ("bfloat16", "float32", "float16")


@dataclass
class BradleyTerryModelConfig(ModelConfig):
    """`trl.ModelConfig` whose defaults say what QLoRA Bradley-Terry training does: LoRA (`use_peft`) on a 4-bit
    (`load_in_4bit`) NF4 double-quant base (`use_bnb_nested_quant`), a sequence-classification task.

    Honoured (passed to `load_qlora_model`): `model_name_or_path`, `dtype`, `attn_implementation`, `lora_r`,
    `lora_alpha`, `lora_dropout`, `lora_target_modules`, `lora_modules_to_save` (trained and saved next to the head),
    `use_rslora` (scaling `alpha / sqrt(r)`), `bnb_4bit_quant_storage`.
    Refused with a `ValueError` naming the field when set otherwise: `use_peft=False`, `load_in_4bit=False`,
    `load_in_8bit`, `bnb_4bit_quant_type` other than nf4 and `use_bnb_nested_quant=False` (the exact merge quantizes
    the base again as in training: NF4, double quant), `use_dora` and `lora_target_parameters` (the streaming
    merge cannot fold them in), `lora_task_type` other than SEQ_CLS, `model_revision` other than main (download the
    revision and pass its directory), a `dtype` other than bfloat16, float32 or float16.
    """

    use_peft: bool = field(default=True, metadata={"help": "train LoRA adapters (QLoRA: always)"})
    load_in_4bit: bool = field(default=True, metadata={"help": "load the base in 4-bit (QLoRA: always)"})
    use_bnb_nested_quant: bool = field(default=True, metadata={"help": "double quantization (QLoRA: always)"})
    lora_task_type: str = field(default="SEQ_CLS", metadata={"help": "the peft task type (reward models: SEQ_CLS)"})

    def __post_init__(self):
        refused = {
            "use_peft": (not self.use_peft, "QLoRA trains LoRA adapters; the 4-bit base cannot be trained"),
            "load_in_4bit": (not self.load_in_4bit, "the recipe trains on a 4-bit base (QLoRA)"),
            "load_in_8bit": (self.load_in_8bit, "the recipe trains on a 4-bit NF4 base, not 8-bit"),
            "bnb_4bit_quant_type": (self.bnb_4bit_quant_type != "nf4",
                                    "the exact merge quantizes the base again in NF4, as training; only nf4"),
            "use_bnb_nested_quant": (not self.use_bnb_nested_quant,
                                     "the exact merge quantizes the base again with double quant, as training"),
            "use_dora": (self.use_dora, "the recipe's streaming merge folds in plain LoRA only; train DoRA with the "
                         "Python API and merge_and_save(low_memory=False)"),
            "lora_target_parameters": (self.lora_target_parameters is not None,
                                       "the recipe's streaming merge folds in LoRA on linear layers only"),
            "lora_task_type": (self.lora_task_type != "SEQ_CLS", "a reward model is a SEQ_CLS model"),
            "model_revision": (self.model_revision != "main", "the base is reloaded by name for the merge; download "
                               "the revision (hf download NAME --revision R --local-dir DIR) and pass DIR"),
            "dtype": (self.dtype not in COMPUTE_DTYPES, f"the compute dtype is one of {', '.join(COMPUTE_DTYPES)}"),
        }
        refuse_settings(self, refused, "unsupported model settings")
        super().__post_init__()
