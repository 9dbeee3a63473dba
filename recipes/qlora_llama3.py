"""Train a Bradley-Terry reward model with QLoRA, evaluate it, merge it and check the merged checkpoint.

    python recipes/qlora_llama3.py --config recipes/configs/llama3_8b_hh.yaml      # one 24 GB GPU
    python recipes/qlora_llama3.py --config recipes/configs/demo_smollm2.yaml      # offline CPU demo, minutes

Any field of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-5 --max_steps 100`.
"""

import json

from trl import ModelConfig, RewardConfig, TrlParser

from bt_peft.pipeline import BradleyTerryScriptArguments, train_reward_model


def main() -> None:
    parser = TrlParser((BradleyTerryScriptArguments, RewardConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    summary = train_reward_model(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps({key: value for key, value in summary.items() if key != "script_args"}, indent=2))


if __name__ == "__main__":
    main()
