"""The `bt-peft` command line, each subcommand run as a real subprocess of the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from bt_peft import score
from bt_peft.evaluation.loading import load_for_scoring
from conftest import preference_rows, write_preference_splits

BT_PEFT = Path(sys.executable).parent / "bt-peft"
ROOT = Path(__file__).resolve().parents[1]


def bt_peft(*args, check: bool = True) -> subprocess.CompletedProcess:
    assert BT_PEFT.is_file(), f"console script missing at {BT_PEFT}: pip install -e ."
    result = subprocess.run([str(BT_PEFT), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory) -> Path:
    """`bt-peft train` on the tiny Llama: YAML config plus flag overrides; returns its output directory."""
    root = tmp_path_factory.mktemp("cli")
    data = write_preference_splits(root, preference_rows(2))
    config = root / "config.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\ndataset_name: {data}\ndataset_test_split: dev\n"
        f"merge_dtype: float32\nmerge_from_4bit: true\noutput_dir: {root / 'out'}\nuse_cpu: true\nbf16: false\n"
        "max_length: 64\nper_device_train_batch_size: 4\nmax_steps: 8\nlearning_rate: 5.0e-3\nreport_to: none\n"
        "save_strategy: 'no'\nlogging_steps: 1\nnum_score_examples: 2\n"
    )
    bt_peft("train", "--config", config, "--max_steps", 2, "--export_scalar", "true")
    return root


def test_help_of_every_command():
    assert "train,eval,score,merge,export,plan,serve" in bt_peft("--help").stdout
    expected = {
        "train": "--config FILE.yaml",
        "eval": "--compare",
        "score": '"reward" added',
        "merge": "--from_4bit",
        "export": "--normalize_on",
        "plan": "--gpu_gb",
        "serve": "--max_queue",
    }
    for command, text in expected.items():
        result = bt_peft(command, "--help")
        assert result.stdout.startswith(f"usage: bt-peft {command}"), result.stdout
        assert text in " ".join(result.stdout.split()), result.stdout  # help text is wrapped to the terminal


def test_train_help_is_the_recipe_parsers_help():
    """`bt-peft train --help` prints a stored copy (no TRL import); it must equal the recipe's live help."""
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_help.py"), "--check"], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]


def test_train_writes_adapter_merged_checkpoint_and_model_card(run):
    out = run / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2  # the flag overrode the YAML's max_steps: 8
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    card = ModelCard.load(out / "merged" / "README.md")
    assert "`logits[:, 1]`" in card.text and "| optimizer steps | 2 |" in card.text
    assert f"| eval accuracy after training | {summary['eval_accuracy_after']:.4g} |" in card.text


def test_train_export_scalar_writes_the_single_score_form_of_the_merge(run):
    from test_reward_export import raw_logits

    out, texts = run / "out", [row["prompt"] + row["chosen"] for row in preference_rows(1)]
    assert json.loads((out / "scalar" / "config.json").read_text())["num_labels"] == 1
    torch.testing.assert_close(raw_logits(out / "scalar", texts)[:, 0], raw_logits(out / "merged", texts)[:, 1], atol=1e-6, rtol=0)


def test_export_command_writes_the_scalar_form(run, tmp_path):
    from test_reward_export import raw_logits

    texts = [row["prompt"] + row["chosen"] for row in preference_rows(1)]
    result = bt_peft("export", run / "out" / "merged", tmp_path / "scalar")
    assert "(scalar)" in result.stdout
    torch.testing.assert_close(raw_logits(tmp_path / "scalar", texts)[:, 0], raw_logits(run / "out" / "merged", texts)[:, 1],
                               atol=1e-6, rtol=0)


def test_eval_merged_against_base_prints_accuracy_with_ci_and_writes_plots(run, tiny_llama_dir):
    output = run / "eval"
    result = bt_peft("eval", run / "out" / "merged", run / "data", "--compare", tiny_llama_dir,
                     "--max_length", 64, "--output_dir", output)
    results = json.loads((output / "evaluation.json").read_text())
    assert list(results) == ["merged", tiny_llama_dir.name]
    for name, metrics in results.items():
        low, high = metrics["accuracy_ci"]
        line = f"{name}: accuracy {metrics['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), 8 pairs, {metrics['ties']} ties"
        assert line in result.stdout, result.stdout
    for png in ("rewards.png", "margins.png", "accuracy_by_length.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_texts_and_conversations_as_in_process(run, tmp_path):
    conversation = [{"role": "user", "content": "can you help me?"}, {"role": "assistant", "content": "Sure."}]
    rows = [{"text": "Human: can you help me? Assistant: No. Go away.", "id": 7}, {"messages": conversation}, conversation]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    merged = run / "out" / "merged"
    bt_peft("score", merged, source, "--output", tmp_path / "out.jsonl", "--batch_size", 2)
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    model, tokenizer = load_for_scoring(merged)
    expected = score(model, tokenizer, [rows[0]["text"], conversation, conversation]).tolist()
    assert [row.pop("reward") for row in scored] == pytest.approx(expected, abs=1e-5)
    assert scored == [rows[0], {"messages": conversation}, {"messages": conversation}]


def test_merge_command_equals_the_trains_merge(run, tmp_path):
    out = run / "out"
    result = bt_peft("merge", out / "adapter", tmp_path / "merged", "--dtype", "float32", "--from_4bit", "--device", "cpu")
    assert "bt-peft merge: wrote model.safetensors (1/1)\n" in result.stderr  # the library's progress log, shown
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.to_dict()["tags"][0] == "reward-model"
    texts = [row["prompt"] + row["chosen"] for row in preference_rows(1)]
    rewards = [score(*load_for_scoring(path), texts) for path in (out / "merged", tmp_path / "merged")]
    assert (rewards[0] - rewards[1]).abs().max().item() <= 1e-6


def test_plan_reports_memory_of_a_config(tiny_llama_dir):
    result = bt_peft("plan", tiny_llama_dir / "config.json", "--batch_size", 2, "--pair_length", 128, "--gpu_gb", 6)
    assert "batch 2 pairs of 128 tokens" in result.stdout and "= total" in result.stdout
    assert "    6 GB GPU: fits" in result.stdout


def test_bad_input_fails_with_a_clear_message(run, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"prompt": "no text"}) + "\n")
    result = bt_peft("score", run / "out" / "merged", source, check=False)
    assert result.returncode == 1
    assert f"bt-peft score: error: {source} line 2: expected {{\"text\": str}}" in result.stderr
    result = bt_peft("eval", run / "out" / "merged", tmp_path / "missing.jsonl", check=False)
    assert result.returncode == 1 and "No such file or directory" in result.stderr and "missing.jsonl" in result.stderr
    result = bt_peft("merge", tmp_path, tmp_path / "merged", check=False)
    assert result.returncode == 1 and "no adapter_config.json" in result.stderr
    result = bt_peft("plan", "llama-3-8b", "--batch_size", "many", check=False)
    assert result.returncode == 2 and "--batch_size" in result.stderr
