"""What every reader of a trained reward model takes from the model itself (issue 20 items 3 and 7): the dtype it was
trained and saved in (not fp32), and the `max_length` it was trained with, recorded with its tokenizer like
`append_eos`: `load_for_scoring`, `score`, `evaluate_pairs`, `bt-peft score`/`eval`/`serve`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from datasets import Dataset

from bt_peft import BradleyTerryRewardTrainer, evaluate_pairs, load_for_scoring, load_qlora_model, merge_and_save, score
from bt_peft.cli import main as cli
from bt_peft.data import encode
from bt_peft.serving.model import load_served_model
from bt_peft.serving.settings import DEFAULT_MAX_LENGTH, ServeSettings
from bt_peft.tokenizer import COMPUTE_DTYPE_KEY, MAX_LENGTH_KEY, trained_max_length
from conftest import CORPUS, fp32_args, preference_rows

MAX_LENGTH = 40
LONG_TEXT = " ".join(CORPUS)  # well over MAX_LENGTH tokens
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bf16_model(tiny_llama_dir, tmp_path_factory):
    """A tiny QLoRA reward model trained one step in bf16 compute with max_length 40: its adapter and bf16 merge."""
    root = tmp_path_factory.mktemp("bf16-trained")
    torch.manual_seed(0)
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.bfloat16)
    trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(root, max_steps=1, max_length=MAX_LENGTH),
                                        train_dataset=Dataset.from_list(preference_rows(1)), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(root / "adapter"))
    merge_and_save(root / "adapter", root / "merged", dtype=torch.bfloat16, from_4bit=True)
    return root


def test_the_trained_settings_are_saved_with_the_tokenizer(bf16_model):
    for directory in ("adapter", "merged"):
        saved = json.loads((bf16_model / directory / "tokenizer_config.json").read_text())
        assert saved[MAX_LENGTH_KEY] == MAX_LENGTH and saved[COMPUTE_DTYPE_KEY] == "bfloat16"


def test_models_load_in_their_own_dtype_and_fp32_stays_a_choice(bf16_model):
    merged, _ = load_for_scoring(bf16_model / "merged")
    assert merged.model.embed_tokens.weight.dtype == torch.bfloat16  # was fp32: a bf16 8B merge became 28 GiB
    adapter, _ = load_for_scoring(bf16_model / "adapter")
    assert {layer.compute_dtype for layer in adapter.modules() if isinstance(layer, bnb.nn.Linear4bit)} == {torch.bfloat16}
    served, _ = load_served_model(str(bf16_model / "merged"), ServeSettings().dtype)
    assert served.model.embed_tokens.weight.dtype == torch.bfloat16
    chosen, _ = load_for_scoring(bf16_model / "merged", torch.float32)
    assert chosen.model.embed_tokens.weight.dtype == torch.float32
    for model in (merged, adapter, served, chosen):
        assert model.config.get_text_config().dtype in (torch.bfloat16, torch.float32)
        assert any(parameter.dtype == torch.float32 for parameter in model.parameters())  # the head stays fp32


def test_help_states_the_dtype_and_length_defaults(capsys):
    for command in ("eval", "score", "serve"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "auto: the model's own" in text and "(default: auto)" in text
        assert "the max_length the model was trained with" in text


def test_score_and_evaluate_pairs_cut_to_the_trained_max_length_by_default(bf16_model):
    model, tokenizer = load_for_scoring(bf16_model / "merged")
    assert trained_max_length(tokenizer) == MAX_LENGTH and len(encode(tokenizer, LONG_TEXT)) > MAX_LENGTH
    default = score(model, tokenizer, [LONG_TEXT])
    assert torch.equal(default, score(model, tokenizer, [LONG_TEXT], max_length=MAX_LENGTH))
    assert not torch.equal(default, score(model, tokenizer, [LONG_TEXT], max_length=10_000))
    pairs = [{"prompt": LONG_TEXT, "chosen": " Sure, I am happy to help.", "rejected": " No. Go away."}]
    results = evaluate_pairs(bf16_model / "merged", None, pairs, progress=False)
    assert results["max_length"] == MAX_LENGTH and results["data"]["truncated"] == 1
    assert max(results["pairs"]["lengths"]) == MAX_LENGTH


def test_cli_score_reads_the_trained_max_length(bf16_model, tmp_path):
    data, output = tmp_path / "texts.jsonl", tmp_path / "rewards.jsonl"
    data.write_text(json.dumps({"text": LONG_TEXT}) + "\n")
    assert cli(["score", str(bf16_model / "merged"), str(data), "--output", str(output)]) == 0
    model, tokenizer = load_for_scoring(bf16_model / "merged")
    expected = score(model, tokenizer, [LONG_TEXT], max_length=MAX_LENGTH).item()
    assert json.loads(output.read_text())["reward"] == pytest.approx(expected, abs=1e-6)


def test_serve_settings_take_the_trained_max_length():
    assert ServeSettings().max_length is None and ServeSettings().dtype == "auto"
    assert ServeSettings().for_model(MAX_LENGTH).max_length == MAX_LENGTH
    assert ServeSettings().for_model(None).max_length == DEFAULT_MAX_LENGTH
    assert ServeSettings(max_length=8).for_model(MAX_LENGTH).max_length == 8  # a flag given wins
    with pytest.raises(ValueError, match="trained with max_length 32768.*--token_budget 32768"):
        ServeSettings().for_model(32768)


def test_the_server_refuses_texts_over_the_trained_max_length(bf16_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "bt_peft.cli", "serve", str(bf16_model / "merged"), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        request = urllib.request.Request(f"{url}/get_reward", json.dumps({"query": ["Human: hi", LONG_TEXT]}).encode(),
                                         {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        assert f"limit of {MAX_LENGTH}" in json.loads(refused.value.read())["error"]
    finally:
        server.terminate()
        server.wait(timeout=60)
