"""Train a Bradley-Terry reward model with QLoRA, evaluate it, merge it and check the merged checkpoint.

    python recipes/qlora_llama3.py --config recipes/configs/llama3_8b_hh.yaml      # one 24 GB GPU
    python recipes/qlora_llama3.py --config recipes/configs/demo_smollm2.yaml      # offline CPU demo, minutes

Any field of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-5 --max_steps 100`.
`bt-peft train --config ...` runs the same job.
"""

from bt_peft.pipeline import run_recipe

if __name__ == "__main__":
    run_recipe()
