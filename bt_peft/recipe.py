"""Train a Bradley-Terry reward model with QLoRA, evaluate it before and after, merge it and check the merge.

    python recipes/qlora_llama3.py --config recipes/configs/llama3_8b_hh.yaml      # one 24 GB GPU
    python recipes/qlora_llama3.py --config recipes/configs/demo_smollm2.yaml      # offline CPU demo, minutes
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/qlora_llama3.py --config ...
    bt-peft train --config ...                                                     # the same, installed

Any field of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-5 --max_steps 100`.
`recipes/qlora_llama3.py` and `bt-peft train` run this module's `main`. It uses only bt-peft's public names: copy
this file to adapt the flow (`python my_recipe.py --config ...` runs the copy).

Writes `<output_dir>/adapter` (adapter, head, tokenizer), `<output_dir>/merged` (a plain 2-label checkpoint with its
model card), `<output_dir>/scalar` (the 1-label export of `bt-peft export`; `--export_scalar false` skips it) and
`<output_dir>/summary.json`: eval accuracy/loss before and after training, train seconds, and the rewards that the
merged checkpoint, loaded with plain transformers, gives a few dev pairs next to the trained model's.
"""

import json

import torch
from transformers import set_seed
from trl import TrlParser

from bt_peft import (BradleyTerryModelConfig, BradleyTerryRewardConfig, BradleyTerryRewardTrainer,
                     BradleyTerryScriptArguments, RunFinisher, load_qlora_model, load_split, resolve_model, show_logs)

DESCRIPTION = ("Train a QLoRA Bradley-Terry reward model, evaluate it, merge it. --config FILE.yaml sets any of the "
               "fields below; flags override it.")


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Parse `argv` (default `sys.argv[1:]`: `--config FILE.yaml` and field overrides), train, evaluate, merge.
    Returns the summary (`RunFinisher.finish`); in a multi-process launch the other processes return its training
    part."""
    # 1. Parse the settings: the YAML of --config, then the flags over it; refuse what the recipe would not use.
    show_logs()  # bt-peft's progress (trainable parameters, data report, merge shards) on stderr
    parser = TrlParser((BradleyTerryScriptArguments, BradleyTerryRewardConfig, BradleyTerryModelConfig), prog=prog,
                       description=DESCRIPTION)
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    if training_args.model_init_kwargs:
        raise ValueError("model_init_kwargs: not used by the recipe, which loads the model with load_qlora_model from "
                         "the model settings (model_name_or_path, dtype, attn_implementation, ...)")
    finisher = RunFinisher(script_args, training_args, model_args)  # refuses existing outputs before training

    # 2. Load the model: a 4-bit NF4 base, LoRA adapters on the attention projections, the 2-label head in fp32.
    set_seed(training_args.seed)  # LoRA's initialisation and the data order are part of the run
    model, tokenizer = load_qlora_model(
        resolve_model(model_args.model_name_or_path), compute_dtype=getattr(torch, model_args.dtype),
        lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules, gradient_checkpointing=training_args.activation_checkpointing,
        attn_implementation=model_args.attn_implementation, trust_remote_code=training_args.trust_remote_code,
        quant_storage=getattr(torch, model_args.bnb_4bit_quant_storage) if model_args.bnb_4bit_quant_storage else None,
        use_rslora=model_args.use_rslora, modules_to_save=model_args.lora_modules_to_save,
    )

    # 3. Load the data: preference pairs (the trainer tokenizes them and cuts long ones from the left).
    train, dev = (load_split(script_args.dataset_name, split, limit, config=script_args.dataset_config,
                             data_dir=script_args.dataset_data_dir)
                  for split, limit in [(script_args.dataset_train_split, script_args.max_train_samples),
                                       (script_args.dataset_test_split, script_args.max_eval_samples)])

    # 4. Train, evaluating before training (the finisher sees to it) and checkpointing as the settings say.
    trainer = BradleyTerryRewardTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                                        processing_class=tokenizer, callbacks=[finisher])
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # 5. Finish: evaluate, save the adapter, merge, check the merge, write summary.json, the card, the scalar export.
    summary = finisher.finish(trainer, dev)
    if trainer.is_world_process_zero():
        print(json.dumps({key: value for key, value in summary.items() if key != "script_args"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
