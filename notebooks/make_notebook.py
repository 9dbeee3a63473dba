"""Write `qlora_bt_colab.ipynb` from the cells below (run after editing them: `python notebooks/make_notebook.py`).

The notebook is the Colab flow of bt-peft: install, pick a model, load it in 4-bit, train, evaluate before and
after with inline plots, merge, reload with plain transformers and score, save or push to the Hub.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Bradley-Terry reward model with QLoRA (bt-peft)

Train a reward model on preference pairs with a 4-bit (NF4) base and LoRA, evaluate it before and after, merge it
into a plain checkpoint, reload it with plain transformers, and save or push it.

**Colab:** *Runtime → Change runtime type → GPU*. Llama-3-8B is gated: accept its licence on the Hub and log in
(`from huggingface_hub import login; login()`). The `smoke` setting runs offline on a CPU in about 2 minutes."""),
    ("code", """import sys

IN_COLAB = "google.colab" in sys.modules
BT_PEFT_SOURCE = "bt-peft"  # what pip installs: a git URL of bt-peft or the path of a clone
if IN_COLAB:  # Colab brings torch with CUDA; elsewhere set up the environment with scripts/setup.sh
    %pip install -q {BT_PEFT_SOURCE}"""),
    ("md", """## Parameters

`SETTING`: `"gpu"` trains Llama-3-8B on Anthropic HH-RLHF (harmless-base) from the Hub in bf16 with pairs of up
to 1,024 tokens (one epoch takes hours on a T4, well under an hour on an A100); `"smoke"` trains the embedded
SmolLM2-135M-Instruct on bt-peft's demo pairs for 2 steps on the CPU (a check that every cell runs, not a
useful model). Set `HUB_REPO_ID` (`"you/name"`) to
push the merged model at the end. `BT_PEFT_NOTEBOOK_SETTING` in the environment overrides `SETTING` (CI uses
it)."""),
    ("code", """import os

SETTING = os.environ.get("BT_PEFT_NOTEBOOK_SETTING", "gpu")  # "gpu" or "smoke"
HUB_REPO_ID = None  # e.g. "you/llama3-8b-bt-hh-harmless"
OUTPUT_DIR = os.environ.get("BT_PEFT_NOTEBOOK_OUTPUT", "outputs/colab-bt")""", ["parameters"]),
    ("code", """SETTINGS = {
    "gpu": dict(model="meta-llama/Meta-Llama-3-8B", data="Anthropic/hh-rlhf", data_dir="harmless-base",
                eval_split="test", dtype="bfloat16", max_length=1024, batch_size=4, accumulation=8, max_steps=-1,
                learning_rate=1e-4, max_train=None, max_eval=1000, use_cpu=False, checkpointing=True),
    "smoke": dict(model="bt_peft:smollm2", data="bt_peft:demo", data_dir=None, eval_split="dev", dtype="float32",
                  max_length=64, batch_size=4, accumulation=1, max_steps=2, learning_rate=5e-4, max_train=8,
                  max_eval=16, use_cpu=True, checkpointing=False),
}
S = SETTINGS[SETTING]
S"""),
    ("md", "## Load the model in 4-bit (NF4, double quant) with LoRA and a 2-label head"),
    ("code", """import torch

from bt_peft import load_qlora_model
from bt_peft.console import show_logs
from bt_peft.embedded import resolve_model

show_logs()  # bt-peft's progress (the trainable parameter count, the merge's shards) in the cell outputs
base_model = resolve_model(S["model"])  # bt_peft:smollm2 -> the embedded checkpoint's directory
compute_dtype = getattr(torch, S["dtype"])
model, tokenizer = load_qlora_model(base_model, compute_dtype=compute_dtype, gradient_checkpointing=S["checkpointing"])"""),
    ("md", "## Preference data"),
    ("code", """from bt_peft.data import load_split

train = load_split(S["data"], "train", S["max_train"], data_dir=S["data_dir"])
dev = load_split(S["data"], S["eval_split"], S["max_eval"], data_dir=S["data_dir"])
len(train), len(dev)"""),
    ("md", "## Evaluate the untrained model (its new head is zero: every reward 0, every pair a tie)"),
    ("code", """from bt_peft import evaluate_pairs

before = evaluate_pairs(model, tokenizer, dev, max_length=S["max_length"], batch_size=16)
print(f"before: accuracy {before['accuracy']:.3f}, 95% CI {before['accuracy_ci']}")"""),
    ("md", "## Train"),
    ("code", """from bt_peft import BradleyTerryRewardConfig, BradleyTerryRewardTrainer

args = BradleyTerryRewardConfig(
    output_dir=OUTPUT_DIR, max_length=S["max_length"], per_device_train_batch_size=S["batch_size"],
    gradient_accumulation_steps=S["accumulation"], max_steps=S["max_steps"], num_train_epochs=1,
    learning_rate=S["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0.03, bf16=S["dtype"] == "bfloat16",
    use_cpu=S["use_cpu"], activation_checkpointing=S["checkpointing"], logging_steps=10, save_strategy="no",
    report_to="none", seed=42,
)
trainer = BradleyTerryRewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
trainer.train()
adapter_dir = trainer.args.output_dir + "/adapter"
trainer.save_model(adapter_dir)"""),
    ("md", "## Evaluate after training: accuracy with a Wilson CI, margins, accuracy by length"),
    ("code", """from IPython.display import Image, display

from bt_peft import plot_evaluation

after = evaluate_pairs(trainer.model, tokenizer, dev, max_length=S["max_length"], batch_size=16)
print(f"after: accuracy {after['accuracy']:.3f}, 95% CI {after['accuracy_ci']}, ties {after['ties']}")
for png in plot_evaluation({"before training": before, "after training": after}, OUTPUT_DIR + "/eval"):
    display(Image(filename=str(png)))"""),
    ("md", """## Merge into a plain checkpoint, with its model card

`from_4bit=True` merges into the NF4-dequantized base, so the merged model computes what the trained 4-bit model
computed (the default merge into the original weights moves rewards by the NF4 error)."""),
    ("code", """from bt_peft import merge_and_save, write_model_card
from bt_peft.export.model_card import evaluation_metrics

merged_dir = merge_and_save(adapter_dir, OUTPUT_DIR + "/merged", dtype=compute_dtype, from_4bit=True, overwrite=True)
write_model_card(
    merged_dir, base_model=S["model"], dataset=S["data"], from_4bit=True, repo_id=HUB_REPO_ID,
    training_settings={"compute dtype": S["dtype"], "max_length": S["max_length"], "learning rate": S["learning_rate"],
                       "optimizer steps": trainer.state.global_step},
    metrics=evaluation_metrics(before, "before training: ") | evaluation_metrics(after, "after training: "),
)
sorted(path.name for path in merged_dir.iterdir())"""),
    ("md", "## Reload with plain transformers and score: the reward is `logits[:, 1]`"),
    ("code", """from transformers import AutoModelForSequenceClassification, AutoTokenizer

served = AutoModelForSequenceClassification.from_pretrained(merged_dir, dtype=torch.float32)
served_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
pair = dev[0]
for side in ("chosen", "rejected"):
    text = pair[side] if pair.get("prompt") is None else pair["prompt"] + pair[side]
    with torch.no_grad():
        reward = served(**served_tokenizer(text, return_tensors="pt")).logits[:, 1]
    print(f"{side}: {reward.item():+.3f}")"""),
    ("md", "## Save or push"),
    ("code", """from bt_peft import push_to_hub

if HUB_REPO_ID:
    print(push_to_hub(merged_dir, HUB_REPO_ID, private=True))
else:
    print(f"merged checkpoint with its model card in {merged_dir}; set HUB_REPO_ID to push it")"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook: `CELLS` in order (markdown or code, code cells optionally tagged), Python 3 kernel, Colab GPU."""
    cells = []
    for kind, source, *tags in CELLS:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags[0]
        cells.append(cell)
    metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4"},
    }
    return new_notebook(cells=cells, metadata=metadata)


if __name__ == "__main__":
    path = Path(__file__).with_name("qlora_bt_colab.ipynb")
    nbformat.write(build(), path)
    print(f"wrote {path}")
