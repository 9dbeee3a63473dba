"""`BradleyTerryScriptArguments`: TRL's `ScriptArguments` plus the data and end-of-run settings of the recipe."""

from dataclasses import dataclass, field

from trl import ScriptArguments

from ..validation import refuse_settings

MERGE_DTYPES = ("bfloat16", "float32", "float16")


@dataclass
class BradleyTerryScriptArguments(ScriptArguments):
    """TRL's script arguments plus the data and merge settings of the reward recipe (`bt_peft.recipe`).

    `dataset_name` is a Hub dataset id, a local directory holding `<split>.jsonl` files, or `bt_peft:demo`. The merge
    and export fields are read by `RunFinisher`. Refused with a `ValueError` naming the field: `dataset_streaming`
    and `ignore_bias_buffers` (nothing would honour them), a `merge_dtype` other than bfloat16, float32 or float16.
    """

    dataset_data_dir: str | None = field(
        default=None, metadata={"help": "data_dir of a Hub dataset, e.g. harmless-base"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training pairs"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N evaluation pairs"})
    merge_dtype: str = field(
        default="bfloat16", metadata={"help": "dtype of the merged checkpoint: bfloat16 or float32"}
    )
    merge_from_4bit: bool = field(
        default=False, metadata={"help": "merge into the dequantized NF4 base (exact rewards)"}
    )
    export_scalar: bool = field(
        default=True, metadata={"help": "also write <output_dir>/scalar: the 1-label export (bt-peft export) for TRL "
                                "GRPO/RLOO, OpenRLHF, vLLM, RewardBench 2 (false: the 2-label merge only)"}
    )
    num_score_examples: int = field(
        default=4, metadata={"help": "evaluation pairs scored with the merged checkpoint (0: no merge check)"}
    )
    merge_check_host_gb: float | None = field(
        default=None, metadata={"help": "host RAM (GB) the merge check may fill with merged weights beyond the GPU's "
                                "free memory; the rest is streamed from disk (default: a quarter of the model's bf16 "
                                "size)"}
    )
    overwrite_outputs: bool = field(
        default=False,
        metadata={"help": "replace existing <output_dir>/adapter, /merged and /scalar (else refused before training)"},
    )

    def __post_init__(self):
        refused = {
            "dataset_streaming": (self.dataset_streaming, "the trainer needs a map-style dataset"),
            "ignore_bias_buffers": (self.ignore_bias_buffers,
                                    "bt-peft's models have no boolean buffers for DDP to skip"),
            "merge_dtype": (self.merge_dtype not in MERGE_DTYPES, "bfloat16, float32 or float16"),
        }
        refuse_settings(self, refused, "unsupported script settings")
