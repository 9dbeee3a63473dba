"""Training: `load_qlora_model` (qlora), `BradleyTerryRewardConfig` (config), `BradleyTerryRewardTrainer` (trainer)
with shared-prefix packing (packing), pickle-free checkpoints (checkpointing) and the non-finite loss guard (guards);
`plan_memory` (planning) estimates its GPU memory. Imports only the core modules of `bt_peft`."""
