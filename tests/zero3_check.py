"""Run by `tests/test_distributed.py` under `torchrun --nproc_per_node 2` (CPU, gloo): load a 4-bit QLoRA reward
model with DeepSpeed ZeRO-3 switched on as the training arguments switch it on (what `accelerate launch
--config_file recipes/accelerate/deepspeed_zero3.yaml` leads to), partition it with `deepspeed.initialize`, and
compare one forward/backward/step with the unpartitioned model.

accelerate's DeepSpeed launcher wants an accelerator, so this makes the `TrainingArguments` with a ZeRO-3 config
itself (they set transformers' `is_deepspeed_zero3_enabled`, under which a `device_map` is refused) and drives
DeepSpeed's engine (what the trainer builds) directly: on DeepSpeed's CPU accelerator, or on each process's GPU when
CUDA is there (`benchmarks/gpu_check.py`'s zero3 section). The 4-bit weights are stored
in the compute dtype (`quant_storage`, fp32 here: DeepSpeed's CPU accelerator has no bf16 optimizer path), as the
FSDP config stores them. SGD without gradient clipping (DeepSpeed clips to norm 1.0 by default) stands in for AdamW, so that one step is
`weight - lr * gradient`, checkable exactly.

    torchrun --nproc_per_node 2 tests/zero3_check.py MODEL_DIR OUTPUT.json

Writes (rank 0) a JSON report: `zero3_enabled`, `world_size`, `device` of the loaded 4-bit weights (before
DeepSpeed partitions them), `four_bit`: per 4-bit weight its full and local
(partitioned) element counts, `max_abs_reward_diff` of the partitioned model's rewards against the unpartitioned
model's, `max_rel_step_diff`: trainable weights after one SGD step (learning rate 1) against the unpartitioned
weights minus their gradients (max abs difference over max(1, max |expected weight|), per tensor), and `trainable`,
the number of trainable tensors.
"""

import sys

import bitsandbytes as bnb
import deepspeed
import torch
import torch.distributed as dist
from transformers import TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

from bt_peft import bt_reward, load_qlora_model
from sharded_check import TEXTS, finish, unsharded_reference

ZERO3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
         "gradient_clipping": 0.0, "zero_allow_untested_optimizer": True}


def main(model_dir: str, report_path: str) -> None:
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=report_path + ".out", deepspeed=ZERO3, use_cpu=not cuda, report_to="none")
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(model_dir, compute_dtype=torch.float32, quant_storage=torch.float32,
                                        lora_dropout=0.0, gradient_checkpointing=False)
    with torch.no_grad():  # a head whose reward row is not zero, so that every LoRA weight gets a gradient
        model.base_model.model.score.modules_to_save["default"].weight[1].normal_(0, 1.0)
    device = next(module.weight.device for module in model.modules() if isinstance(module, bnb.nn.Linear4bit))
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True).to(device)
    reference, expected = unsharded_reference(model, batch)

    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, config=ZERO3, optimizer=torch.optim.SGD(trainable, lr=1.0))
    four_bit = [{"full": module.weight.ds_numel, "local": module.weight.ds_tensor.numel()}
                for module in engine.module.modules() if isinstance(module, bnb.nn.Linear4bit)]
    rewards = bt_reward(engine(**batch).logits)
    engine.backward(rewards.sum())  # every process has the same batch: the averaged gradients are the unsharded ones
    engine.step()
    trained = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([trained[name] for name in expected]):
        step_diff = max((trained[name] - weight).abs().max().item() / max(1.0, weight.abs().max().item())
                        for name, weight in expected.items())
    finish({"zero3_enabled": is_deepspeed_zero3_enabled() and args.deepspeed is not None,
            "world_size": dist.get_world_size(), "device": str(device), "four_bit": four_bit,
            "max_abs_reward_diff": (rewards - reference).abs().max().item(), "max_rel_step_diff": step_diff,
            "trainable": len(expected)}, report_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
