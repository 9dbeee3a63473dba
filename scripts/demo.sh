#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the offline demo: QLoRA reward model on the embedded SmolLM2-135M-Instruct
# and bt-peft's demo preference set, evaluated before/after, merged, reloaded and scored. Minutes on a CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python recipes/qlora_llama3.py --config recipes/configs/demo_smollm2.yaml "$@"
