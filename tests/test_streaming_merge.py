import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

from bt_peft import AutoModelForBradleyTerry, merge_and_save, score
from bt_peft.quantization import load_reward_model, nf4_config, nf4_device
from bt_peft.export.streaming_merge import map_checkpoint_keys, nf4_roundtrip, quantized_weights, reward_skeleton
from bt_peft.tokenizer import load_tokenizer
from conftest import build_tokenizer, preference_rows, tiny_llama_config

TEXTS = [row["prompt"] + row[side] for row in preference_rows(1) for side in ("chosen", "rejected")] + ["Human: hi</s>"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def random_base(path: Path, **config_overrides) -> Path:
    """A tiny random causal-LM Llama checkpoint with its tokenizer."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer), **config_overrides)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def random_adapter(base: Path, path: Path, **lora_overrides) -> Path:
    """A LoRA adapter with random A and B (not the zero B of a fresh adapter) and a random 2-label head, saved by peft
    with the tokenizer, as `trainer.save_model` lays it out."""
    torch.manual_seed(1)
    model = AutoModelForBradleyTerry.from_pretrained(base, dtype=torch.float32)
    torch.nn.init.normal_(model.score.weight, std=0.02)  # a trained head, not the new one's zeros
    settings = dict(r=4, lora_alpha=8, target_modules=ATTENTION, modules_to_save=["score"], init_lora_weights=False, task_type="SEQ_CLS")
    get_peft_model(model, LoraConfig(**{**settings, **lora_overrides})).save_pretrained(path)
    load_tokenizer(base).save_pretrained(path)
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return {key: value for path in sorted(directory.glob("*.safetensors")) for key, value in load_file(path).items()}


def assert_same_checkpoint(streamed: Path, in_memory: Path) -> None:
    """Same files, config, index and bitwise-equal weights."""
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in in_memory.iterdir())
    assert json.loads((streamed / "config.json").read_text()) == json.loads((in_memory / "config.json").read_text())
    ours, theirs = weights(streamed), weights(in_memory)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


@pytest.fixture(scope="module")
def routes(trained, tmp_path_factory):
    """The trained adapter merged both ways (streaming, in memory) in fp32 and bf16, default and exact route, in small
    shards."""
    _, adapter = trained
    root = tmp_path_factory.mktemp("routes")
    merges = {}
    for dtype in (torch.float32, torch.bfloat16):
        for from_4bit in (False, True):
            for low_memory in (True, False):
                name = f"{dtype}-{from_4bit}-{low_memory}"
                merges[dtype, from_4bit, low_memory] = merge_and_save(adapter, root / name, dtype=dtype, from_4bit=from_4bit,
                                                                      max_shard_size="50KB", low_memory=low_memory)
    return merges


@pytest.mark.parametrize("from_4bit", [False, True], ids=["default", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_streaming_merge_equals_the_in_memory_merge_bitwise(routes, dtype, from_4bit):
    """fp32 and bf16 alike: each weight is cast to `dtype` (and round-tripped through NF4 on the exact route), then the
    fp32 delta `(B @ A) * scaling` is added in place, which is what peft does to a base loaded in `dtype`."""
    streamed, in_memory = routes[dtype, from_4bit, True], routes[dtype, from_4bit, False]
    assert_same_checkpoint(streamed, in_memory)
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    expected = json.loads((in_memory / "model.safetensors.index.json").read_text())
    assert index["metadata"] == expected["metadata"] and index["weight_map"].keys() == expected["weight_map"].keys()
    assert len(set(index["weight_map"].values())) > 3
    assert {tensor.dtype for tensor in weights(streamed).values()} == {dtype}


@pytest.mark.parametrize("from_4bit", [False, True], ids=["default", "exact"])
def test_streamed_checkpoint_gives_the_rewards_of_the_in_memory_one(routes, from_4bit):
    rewards = []
    for low_memory in (True, False):
        directory = routes[torch.float32, from_4bit, low_memory]
        model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32)
        rewards.append(score(model, AutoTokenizer.from_pretrained(directory), TEXTS))
    assert torch.equal(rewards[0], rewards[1])


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True}, {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 3}}],
                         ids=["plain", "rslora", "patterns"])
def test_tied_embeddings_and_lora_scalings(tmp_path, lora):
    """A base with tied embeddings (its checkpoint has no `lm_head.weight`), and each way peft scales a LoRA delta."""
    base = random_base(tmp_path / "base", tie_word_embeddings=True)
    from safetensors import safe_open

    with safe_open(base / "model.safetensors", framework="pt") as file:
        assert "lm_head.weight" not in file.keys()
    adapter = random_adapter(base, tmp_path / "adapter", **lora)
    streamed = merge_and_save(adapter, tmp_path / "streamed", dtype=torch.float32)
    in_memory = merge_and_save(adapter, tmp_path / "in-memory", dtype=torch.float32, low_memory=False)
    assert_same_checkpoint(streamed, in_memory)
    assert not torch.equal(weights(streamed)["model.layers.0.self_attn.q_proj.weight"],
                           load_file(base / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])


def test_unsupported_adapters_are_refused_and_nothing_is_written(tmp_path):
    base = random_base(tmp_path / "base")
    adapter = random_adapter(base, tmp_path / "adapter", use_dora=True)
    with pytest.raises(ValueError, match=r"use_dora.*low_memory=False"):
        merge_and_save(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))
    merge_and_save(adapter, tmp_path / "merged", low_memory=False)  # peft merges DoRA in memory
    assert (tmp_path / "merged" / "config.json").is_file()


def test_checkpoint_keys_are_mapped_without_guessing():
    shapes = {"model.embed_tokens.weight": [10, 4], "model.norm.weight": [4], "score.weight": [2, 4]}
    here = Path("model.safetensors")
    bare = {"embed_tokens.weight": (here, [10, 4]), "norm.weight": (here, [4])}
    assert map_checkpoint_keys(shapes, "model", bare, {"score.weight"}) == {
        "model.embed_tokens.weight": "embed_tokens.weight", "model.norm.weight": "norm.weight"}
    causal = {"model.embed_tokens.weight": (here, [10, 4]), "model.norm.weight": (here, [4]), "lm_head.weight": (here, [10, 4])}
    assert set(map_checkpoint_keys(shapes, "model", causal, {"score.weight"})) == {"model.embed_tokens.weight", "model.norm.weight"}
    cases = [
        ({**causal, "model.layers.0.mlp.experts.0.w1.weight": (here, [4, 4])}, {"score.weight"}, "base checkpoint has weights with no place"),
        ({"model.embed_tokens.weight": (here, [10, 4])}, {"score.weight"}, "no weights for: model.norm.weight"),
        ({**causal, "model.norm.weight": (here, [5])}, {"score.weight"}, "other shapes .* model.norm.weight"),
        (causal, set(), "no weights for: score.weight"),
        (causal, {"score.weight", "classifier.weight"}, "adapter has weights with no place .* classifier.weight"),
    ]
    for checkpoint, provided, message in cases:
        with pytest.raises(ValueError, match=message + ".*low_memory=False"):
            map_checkpoint_keys(shapes, "model", checkpoint, provided)


def test_quantized_weights_are_those_bitsandbytes_quantizes(tiny_llama_dir):
    import bitsandbytes as bnb

    model = load_reward_model(tiny_llama_dir, nf4_config(torch.float32), dtype=torch.float32, device_map={"": "cpu"})
    expected = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    skeleton = reward_skeleton(model.config)
    assert quantized_weights(skeleton) == expected and "score.weight" not in expected and len(expected) == 14


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weightwise_nf4_roundtrip_equals_loading_in_nf4_and_dequantizing(tiny_llama_dir, dtype):
    """The exact route's weight-by-weight round trip (both merge routes use it, on the GPU when there is one) gives
    bitwise what transformers' NF4 loading followed by `dequantize` gives, for every quantized weight."""
    reference = load_reward_model(tiny_llama_dir, nf4_config(dtype), dtype=dtype, device_map={"": "cpu"}).dequantize(dtype=dtype)
    original = load_reward_model(tiny_llama_dir, dtype=dtype).state_dict()
    expected = reference.state_dict()
    keys = quantized_weights(reward_skeleton(reference.config))
    assert len(keys) == 14
    for key in keys:
        roundtrip = nf4_roundtrip(original[key], nf4_device())
        assert roundtrip.device.type == "cpu" and roundtrip.dtype == dtype
        assert not torch.equal(roundtrip, original[key]) and torch.equal(roundtrip, expected[key]), key
