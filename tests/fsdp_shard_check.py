"""Run by `tests/test_distributed.py` under `torchrun --nproc_per_node 2` (CPU, gloo): shard a 4-bit QLoRA reward
model with FSDP as `recipes/accelerate/fsdp_qlora.yaml` configures it, and compare one forward/backward with the
unsharded model.

accelerate refuses FSDP without an accelerator ("There are currently no available devices found, must be one of
'XPU', 'CUDA', ..."), so this drives torch's FSDP (what accelerate's FSDP plugin builds) directly, with the
settings of that config: FULL_SHARD, `use_orig_params=False`, one unit per decoder layer plus one per trainable
leaf (peft's `fsdp_auto_wrap_policy`, which transformers installs for PEFT models). Two settings need a GPU and
are left out: `sync_module_states` and a bf16 mixed-precision policy (on a GPU, autocast casts the fp32 LoRA
inputs; on a CPU peft casts them to fp32 ahead of FSDP's bf16 cast).

    torchrun --nproc_per_node 2 tests/fsdp_shard_check.py MODEL_DIR OUTPUT.json [CHECKPOINTING]

CHECKPOINTING: "none" (default), "reentrant" or "non-reentrant": activation checkpointing of the decoder layers of
that kind (`recipes/configs/llama3_8b_hh_fsdp.yaml` sets non-reentrant; peft's FSDP-QLoRA example reentrant), on
the unsharded model and the sharded one alike, the model in training mode.

Writes (rank 0) a JSON report: `world_size`, `units` (per FSDP unit: dtype, local and full element counts, whether
it holds 4-bit weights), `max_abs_reward_diff` against the unsharded model, `max_abs_score_diff`: `bt_peft.score` of the
sharded model called by every process (as the recipe scores the trained model for its merge check) against the
unsharded model's, `max_abs_step_diff`: trainable weights after one SGD step (learning rate 1) against the
unsharded model's weights minus its gradients, and `forwards_in_backward`: how often decoder layer 0's attention ran
during the sharded backward (1 when the layer is checkpointed, 0 otherwise).
"""

import sys

import bitsandbytes as bnb
import torch
import torch.distributed as dist
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from bt_peft import bt_reward, load_qlora_model, score
from sharded_check import TEXTS, finish, unsharded_reference


def main(model_dir: str, report_path: str, checkpointing: str = "none") -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(model_dir, compute_dtype=torch.bfloat16, quant_storage=torch.bfloat16,
                                        lora_dropout=0.0, gradient_checkpointing=False, device_map={"": "cpu"})
    if checkpointing != "none":
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": {"reentrant": True, "non-reentrant": False}[checkpointing]})
        model.train()  # checkpointing is active in training mode only
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    scored_reference = score(model, tokenizer, TEXTS)
    reference, expected = unsharded_reference(model, batch)

    sharded = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), use_orig_params=False,
                   device_id=torch.device("cpu"))
    units = []
    for unit in FSDP.fsdp_modules(sharded):
        handle = unit._handle
        if handle is not None:
            flat = handle.flat_param
            units.append({"dtype": str(flat.dtype), "local": flat.numel(), "full": flat._unpadded_unsharded_size.numel(),
                          "four_bit": any(isinstance(info.module, bnb.nn.Linear4bit) for info in flat._param_infos)})
    scored = score(sharded, tokenizer, TEXTS)  # the recipe's merge-check scoring: every process takes part
    rewards = bt_reward(sharded(**batch).logits)
    forwards = []  # decoder layer 0's attention calls: a checkpointed layer runs its forward again in the backward
    hook = model.base_model.model.model.layers[0].self_attn.register_forward_pre_hook(lambda *_: forwards.append(1))
    rewards.sum().backward()  # every process has the same batch: the averaged gradients are the unsharded ones
    hook.remove()
    forwards_in_backward = len(forwards)
    torch.optim.SGD([p for p in sharded.parameters() if p.requires_grad], lr=1.0).step()
    with FSDP.summon_full_params(sharded):
        stepped = {name.replace("_fsdp_wrapped_module.", ""): p for name, p in sharded.named_parameters()}
        step_diff = max((stepped[name] - weight).abs().max().item() for name, weight in expected.items())
    finish({"world_size": dist.get_world_size(), "units": units, "checkpointing": checkpointing,
            "forwards_in_backward": forwards_in_backward,
            "max_abs_reward_diff": (rewards - reference).abs().max().item(), "max_abs_step_diff": step_diff,
            "max_abs_score_diff": (scored - scored_reference).abs().max().item(), "trainable": len(expected)},
           report_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
