"""`bt-peft serve`: real server processes on localhost (`python -m bt_peft.cli serve`) on tiny saved checkpoints, a real
HTTP client (urllib), rewards compared with `bt_peft.score` in this process."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bt_peft import AutoModelForBradleyTerry, load_for_scoring, score
from bt_peft.data import encode, fit_to_length
from bt_peft.serving.batching import plan_batches
from bt_peft.tokenizer import choose_pad_token, set_append_eos
from conftest import CHAT_CONVERSATIONS, CORPUS, build_tokenizer, openrlhf_query, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
WORDS = " ".join(CORPUS).split()
CONVERSATION = [{"role": "user", "content": "can you help me?"}, {"role": "assistant", "content": "Sure, happy to help."}]


def text_of(index: int, words: int) -> str:
    """A distinct text of about `words` words (plus the index, so no two texts are the same)."""
    return f"Human: question {index}? Assistant: " + " ".join(WORDS[(index + k) % len(WORDS)] for k in range(words))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny 2-label reward checkpoint with a random (non-zero) head, its 1-label scalar form (head = row 1; its
    tokenizer has no chat template), and the same model with a tokenizer that records `append_eos`."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = build_tokenizer()
    tokenizer.pad_token = choose_pad_token(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForBradleyTerry.from_config(tiny_llama_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    torch.nn.init.normal_(model.score.weight, std=0.5)
    model.save_pretrained(root / "merged")
    tokenizer.save_pretrained(root / "merged")
    scalar = AutoModelForSequenceClassification.from_config(tiny_llama_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1))
    state = model.state_dict()
    state["score.weight"] = state["score.weight"][1:]
    scalar.load_state_dict(state)
    scalar.save_pretrained(root / "scalar")
    template, tokenizer.chat_template = tokenizer.chat_template, None
    tokenizer.save_pretrained(root / "scalar")  # a tokenizer without a chat template: conversations are refused
    tokenizer.chat_template = template
    model.save_pretrained(root / "merged-eos")
    set_append_eos(tokenizer, True)
    tokenizer.save_pretrained(root / "merged-eos")
    return {"merged": root / "merged", "scalar": root / "scalar", "merged-eos": root / "merged-eos"}


@pytest.fixture(scope="module")
def reference(checkpoints):
    """The merged checkpoint loaded in this process as `bt_peft.score` users load it."""
    return load_for_scoring(checkpoints["merged"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `bt-peft serve` process and a small HTTP client for it."""

    def __init__(self, model: Path, flags: list[str], log: Path, env: dict | None = None):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        command = [sys.executable, "-m", "bt_peft.cli", "serve", str(model), "--port", self.url.rsplit(":", 1)[1], *flags]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                            env=os.environ | (env or {}))

    def request(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
        """(status, JSON body) of one request; `body` is sent as is when bytes, as JSON otherwise."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def rewards(self, texts: list, form: str = "query", headers: dict | None = None) -> list[float]:
        status, answer = self.request("POST", "/get_reward", {form: texts}, headers)
        assert status == 200, answer
        return answer["rewards"]

    def wait_ready(self, headers: dict | None = None, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if self.request("GET", "/health", headers=headers, timeout=5)[0] == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the server did not answer /health in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


API_KEY = "test-key-0123"
KEY_HEADER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def fleet(checkpoints, chat_reward_dirs, tmp_path_factory):
    """Every server of this file, started at once so that their start-ups (mostly imports) overlap:
    - main: the merged checkpoint with small request limits;
    - strict: an API key from the environment, a queue of 4 texts, each waiting up to 1.5 s for a batch, at most 3
      requests in flight and 8,192 bytes of bodies buffered, padding scored as sent (--strip_pad false);
    - scalar: the 1-label checkpoint, long texts cut to 32 tokens;
    - sigterm: the merged checkpoint, texts waiting up to 1.5 s (stopped by its test);
    - eos: the append_eos checkpoint;
    - chat: a tiny model with SmolLM2's tokenizer and chat template."""
    logs = tmp_path_factory.mktemp("logs")
    merged, scalar = checkpoints["merged"], checkpoints["scalar"]
    servers = {
        "main": Server(merged, ["--max_length", "128", "--max_texts", "8", "--max_body_bytes", "4096", "--max_wait_ms", "20"],
                       logs / "main.log"),
        "strict": Server(merged, ["--max_queue", "4", "--max_texts", "4", "--max_wait_ms", "1500", "--max_requests", "3",
                                  "--max_body_bytes", "4096", "--max_buffered_bytes", "8192", "--strip_pad", "false"],
                         logs / "strict.log", env={"BT_PEFT_API_KEY": API_KEY}),
        "scalar": Server(scalar, ["--truncate", "--max_length", "32"], logs / "scalar.log"),
        "sigterm": Server(merged, ["--max_wait_ms", "1500"], logs / "sigterm.log"),
        "eos": Server(checkpoints["merged-eos"], [], logs / "eos.log"),
        "chat": Server(chat_reward_dirs["merged"], [], logs / "chat.log"),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        for server in servers.values():
            server.stop()


@pytest.fixture
def server(fleet):
    fleet["main"].wait_ready()
    return fleet["main"]


@pytest.fixture
def strict_server(fleet):
    fleet["strict"].wait_ready(KEY_HEADER)
    return fleet["strict"]


def test_plan_batches_sorts_by_length_within_the_token_budget():
    lengths = [30, 5, 12, 5, 40, 100]
    batches = plan_batches(lengths, token_budget=64)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    assert [lengths[index] for batch in batches for index in batch] == sorted(lengths)
    assert all(len(batch) * max(lengths[i] for i in batch) <= 64 for batch in batches if len(batch) > 1)
    assert batches == [[1, 3, 2], [0], [4], [5]]  # 100 > the budget: alone


def test_micro_batcher_batches_concurrent_requests_by_length_and_bounds_its_queue():
    import asyncio

    from bt_peft.serving.batching import MicroBatcher, QueueFullError, Unavailable

    batches = []

    def score_batch(sequences):  # reward = the sequence's first id, so each answer shows whose it is
        batches.append([len(ids) for ids in sequences])
        return [float(ids[0]) for ids in sequences]

    async def scenario():
        batcher = MicroBatcher(score_batch, token_budget=12, max_wait_s=0.05, max_queue=6)
        batcher.start()
        requests = [[[1] * 4, [2] * 1], [[3] * 2], [[4] * 6, [5] * 1, [6] * 3]]
        answers = await asyncio.gather(*(batcher.submit(request) for request in requests))
        first = asyncio.ensure_future(batcher.submit([[7]] * 6))
        await asyncio.sleep(0)  # queued: the queue is full
        with pytest.raises(QueueFullError):
            await batcher.submit([[8]])
        answers.append(await first)
        await batcher.stop()
        with pytest.raises(Unavailable):
            await batcher.submit([[9]])
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0] * 6]
    assert batches[:2] == [[1, 1, 2, 3], [4, 6]]  # one round of 3 requests, by length, <= 12 padded tokens a batch
    assert batches[2:] == [[1] * 6]


def test_rewards_equal_score_for_texts_and_conversations(server, reference):
    model, tokenizer = reference
    texts = [text_of(0, 3), text_of(1, 20), "Human: hi"]
    assert server.rewards(texts) == pytest.approx(score(model, tokenizer, texts).tolist(), abs=1e-5)
    conversations = [CONVERSATION, CONVERSATION[:1]]
    assert server.rewards(conversations, "messages") == pytest.approx(score(model, tokenizer, conversations).tolist(), abs=1e-5)
    assert server.request("GET", "/health") == (200, {"status": "ok", "waiting": 0})


def test_openrlhf_queries_get_the_trained_reward(checkpoints, fleet, reference):
    """OpenRLHF's PPO posts `decode(prompt_ids + generated_ids, skip_special_tokens=False)`: the BOS of a chat
    template at the start (not doubled here) and, from a finished generation, the eos at the end (the reward of a
    model trained with append_eos is read there; the server appends it when a text lacks it)."""
    model, tokenizer = reference
    texts = [text_of(20, 4), text_of(21, 15)]
    sent = [tokenizer.bos_token + text for text in texts]
    fleet["main"].wait_ready()
    assert fleet["main"].rewards(sent) == pytest.approx(score(model, tokenizer, texts).tolist(), abs=1e-5)
    eos_tokenizer = load_for_scoring(checkpoints["merged-eos"])[1]
    with_eos = score(model, eos_tokenizer, texts).tolist()
    assert with_eos != pytest.approx(score(model, tokenizer, texts).tolist(), abs=1e-3)
    served = fleet["eos"]
    served.wait_ready()
    for query in (texts, [text + tokenizer.eos_token for text in sent]):
        assert served.rewards(query) == pytest.approx(with_eos, abs=1e-5)


def test_64_concurrent_clients_each_get_their_own_rewards(server, reference):
    model, tokenizer = reference
    requests = [[text_of(64 * k + client, 1 + (7 * client + 5 * k) % 45) for k in range(1 + client % 3)] for client in range(64)]
    expected = score(model, tokenizer, [text for texts in requests for text in texts]).tolist()
    barrier = threading.Barrier(64)

    def client(texts: list[str]) -> list[float]:
        barrier.wait()
        return server.rewards(texts)

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(client, requests))
    served = [reward for rewards in answers for reward in rewards]
    assert [len(rewards) for rewards in answers] == [len(texts) for texts in requests]
    assert served == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == len(expected)  # distinct rewards: a mixed-up answer could not pass


@pytest.mark.parametrize(("body", "status", "field"), [
    (b'{"query": ["unclosed', 400, "body"),
    (b'["a list"]', 400, "body"),
    ({}, 400, "query"),
    ({"query": "a string, not a list"}, 400, "query"),
    ({"query": []}, 400, "query"),
    ({"query": ["fine", 7]}, 400, "query[1]"),
    ({"query": ["fine", ""]}, 400, "query[1]"),
    ({"messages": [[{"role": "user", "content": "hi"}], [{"role": "robot", "content": "hi"}]]}, 400, "messages[1][0].role"),
    ({"messages": [[]]}, 400, "messages[0]"),
    ({"query": ["a"] * 9}, 413, "query"),
    ({"query": ["short", text_of(0, 200)]}, 413, "query[1]"),
    ({"query": ["x" * 5000]}, 413, "body"),
    (b'{"query": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, "body"),  # RecursionError in json
    (b'{"query": ["fine", "lone \\ud800 surrogate"]}', 400, "query[1]"),
    (b'{"messages": [[{"role": "user", "content": "\\udfff"}]]}', 400, "messages[0][0].content"),
    (b'{"messages": [[{"role": "user", "content": "hi", "\\ud800": 1}]]}', 400, "messages[0][0] (a key)"),
    ({"query": ["<|endoftext|></s><|endoftext|>"]}, 400, "query[0]"),  # nothing but padding
])
def test_bad_requests_get_a_json_error_naming_the_field_and_the_server_keeps_serving(server, body, status, field):
    code, answer = server.request("POST", "/get_reward", body)
    assert (code, answer["field"]) == (status, field), answer
    assert answer["error"].startswith(f"{field}: ")
    assert len(server.rewards(["Human: still there? Assistant: yes"])) == 1


def test_unknown_routes_and_methods_are_json_errors(server):
    assert server.request("GET", "/nope")[0] == 404
    assert server.request("GET", "/get_reward") == (405, {"error": "Method Not Allowed", "field": None})


def test_the_api_key_is_required_on_every_request(strict_server):
    good = KEY_HEADER
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
        for method, path, body in (("GET", "/health", None), ("POST", "/get_reward", {"query": ["hi"]})):
            code, answer = strict_server.request(method, path, body, headers)
            assert (code, answer["field"]) == (401, "Authorization"), (headers, path)
    assert strict_server.request("GET", "/health", headers=good)[0] == 200
    assert len(strict_server.rewards(["Human: hi"], headers=good)) == 1


def test_a_full_queue_answers_503_at_once_and_recovers(strict_server, reference):
    good = KEY_HEADER
    texts = [text_of(k, 4) for k in range(4)]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(strict_server.rewards, texts, "query", good)  # fills the queue for ~1.5 s
        deadline = time.monotonic() + 30
        while strict_server.request("GET", "/health", headers=good)[1]["waiting"] < 4:
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.02)
        started = time.monotonic()
        code, answer = strict_server.request("POST", "/get_reward", {"query": ["Human: one more"]}, good)
        assert (code, answer["field"]) == (503, None) and "retry later" in answer["error"]
        assert time.monotonic() - started < 1.0  # refused, not queued behind the batch
        assert first.result(timeout=60) == pytest.approx(score(*reference, texts).tolist(), abs=1e-5)
    assert len(strict_server.rewards(["Human: one more"], headers=good)) == 1


def test_a_scalar_checkpoint_is_served_as_its_logit_0_and_long_texts_are_cut_like_training(checkpoints, fleet):
    path = checkpoints["scalar"]
    plain = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = load_for_scoring(checkpoints["merged"])[1]
    texts = [text_of(3, 2), text_of(4, 60), text_of(5, 120), text_of(6, 2000)]  # the last two: tokenized from the end
    assert len(texts[3]) > 16 * 32 * 10  # 16 x --max_length characters are tokenized, a tenth of it
    special_prefix = encode(tokenizer, "")
    with torch.no_grad():
        expected = [plain(input_ids=torch.tensor([fit_to_length(encode(tokenizer, text), 32, special_prefix)])).logits[0, 0].item()
                    for text in texts]
    served = fleet["scalar"]
    served.wait_ready()
    assert served.rewards(texts) == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 4


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(fleet, reference):
    texts = [[text_of(100 + k, 5 + k)] for k in range(3)]
    served = fleet["sigterm"]
    served.wait_ready()
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(served.rewards, request) for request in texts]
        deadline = time.monotonic() + 30
        while served.request("GET", "/health")[1]["waiting"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        served.process.send_signal(signal.SIGTERM)
        rewards = [answer.result(timeout=60) for answer in answers]
    assert served.process.wait(timeout=60) == 0, served.log.read_text()[-3000:]
    assert [reward for rewards_ in rewards for reward in rewards_] == pytest.approx(
        score(*reference, [text for request in texts for text in request]).tolist(), abs=1e-5)


@pytest.mark.parametrize("form", ["merged", "scalar"])
def test_load_in_4bit_quantizes_the_body_and_keeps_the_reward_head(checkpoints, reference, form):
    import bitsandbytes as bnb

    from bt_peft.serving.model import load_served_model

    model, tokenizer = load_served_model(str(checkpoints[form]), load_in_4bit=True, device="cpu")
    assert sum(isinstance(module, bnb.nn.Linear4bit) for module in model.modules()) == 14  # 2 layers x 7 projections
    assert type(model.score) is torch.nn.Linear and model.score.weight.dtype == torch.float32
    assert model.score.weight[1].tolist() == pytest.approx(reference[0].score.weight[1].tolist())
    if form == "scalar":  # the 1-label head became row 1; row 0 is zeros
        assert not model.score.weight[0].any()
    texts = [text_of(7, 5), text_of(8, 30)]
    quantized, exact = score(model, tokenizer, texts), score(*reference, texts)
    assert torch.allclose(quantized, exact, atol=0.2 * exact.abs().max().item()) and not torch.equal(quantized, exact)


def test_an_over_long_text_is_refused_on_its_first_characters(server):
    code, answer = server.request("POST", "/get_reward", {"query": ["Human: hi " + "word " * 600]})
    assert (code, answer["field"]) == (413, "query[0]"), answer
    assert "its first 2048 characters alone make" in answer["error"]  # 16 x --max_length 128, not all 3,010


def test_the_buffer_budget_must_hold_one_body():
    from bt_peft.serving.settings import ServeSettings

    with pytest.raises(ValueError, match="--max_buffered_bytes"):
        ServeSettings(max_body_bytes=4096, max_buffered_bytes=4095)


def test_conversations_on_a_tokenizer_without_a_chat_template_are_a_400(fleet):
    served = fleet["scalar"]
    served.wait_ready()
    code, answer = served.request("POST", "/get_reward", {"messages": [CONVERSATION]})
    assert (code, answer["field"]) == (400, "messages") and "no chat template" in answer["error"], answer
    code, answer = served.request("POST", "/get_reward", b'{"query": [' + b"7" * 5000 + b"]}")  # > 4,300 digits
    assert (code, answer["field"]) == (400, "body") and "not valid JSON" in answer["error"], answer
    assert len(served.rewards(["Human: still there?"])) == 1


def malformed_bodies(count: int, seed: int = 0) -> list[bytes]:
    """`count` request bodies a server must refuse (each a client fault), drawn from generators of bad types, nesting,
    sizes, encodings, unicode and empty values (the main server's limits: 8 texts, 128 tokens, 4,096 bytes)."""
    import random

    rng = random.Random(seed)
    scalars = [None, True, 0, -1, 3.5, 1e308, "", "text", [], {}]

    def nested(depth: int, brackets: bool = False) -> bytes:
        opener, closer = (b"[", b"]") if brackets else rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return opener * depth + b"1" + closer * depth

    def message(**fields) -> dict:
        return {"role": "user", "content": "hi"} | fields

    generators = [
        lambda: json.dumps(rng.choice(scalars + [["a"], "query"])).encode(),  # not an object
        lambda: json.dumps({"query": rng.choice(scalars[:-3] + [{}, {"0": "a"}])}).encode(),  # query not a list
        lambda: json.dumps({"query": ["ok", rng.choice(scalars[:5] + [["a"], {}, ""])]}).encode(),  # a bad element
        lambda: json.dumps({"messages": [[rng.choice([message(role=rng.choice(["", "bot", None, 1])),
                                                      message(content=rng.choice([None, 1, ["a"], {}])),
                                                      {"role": "user"}, {"content": "hi"}, "hi", []])]]}).encode(),
        lambda: json.dumps({"messages": rng.choice([[], [[]], ["hi"], [{}], [[[]]]])}).encode(),
        lambda: json.dumps({rng.choice(["Query", "queries", "prompts", ""]): ["hi"]}).encode(),  # neither field
        lambda: json.dumps({"query": ["hi"], "messages": [[message()]]}).encode(),  # both
        lambda: b'{"query": ' + nested(rng.randrange(1100, 2000), brackets=True) + b"}",  # past the recursion limit
        lambda: b'{"query": [' + nested(rng.randrange(2, 50)) + b"]}",  # nested elements
        lambda: json.dumps({"query": ["a"] * rng.randrange(9, 40)}).encode(),  # too many texts
        lambda: json.dumps({"query": ["word " * rng.randrange(200, 800)]}).encode(),  # too many tokens or bytes
        lambda: b'{"query": ["' + b"x" * rng.randrange(4100, 20000) + b'"]}',  # body too large
        lambda: rng.choice([b"", b"{", b'{"query": ["a"]', b'{"query": [,]}', b"\x00", b"nul", b'{"query": ["a"]}}']),
        lambda: b'{"query": ["' + bytes(rng.choice([[0xff], [0xc3], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0x80]])) + b'"]}',
        lambda: json.dumps({"query": ["hi", "\\u" + rng.choice(["d800", "dbff", "dc00", "dfff"])]}).encode().replace(b"\\\\u", b"\\u"),
        lambda: json.dumps({"messages": [[message(content="\\udfff")]]}).encode().replace(b"\\\\u", b"\\u"),
        lambda: json.dumps({"query": ["ok", rng.choice(["", "<|endoftext|>", "</s><|endoftext|>"])]}).encode(),  # empty
        lambda: json.dumps({"query": ["a"], "extra": nested(10).decode()}).encode()[:-1],  # cut short
    ]
    return [rng.choice(generators)() for _ in range(count)]


def test_a_fuzz_of_malformed_bodies_gets_only_4xx_and_the_server_stays_correct(server, reference):
    bodies = malformed_bodies(300)
    assert len(set(bodies)) > 100  # generated, not one body repeated
    statuses = {}
    for body in bodies:
        code, answer = server.request("POST", "/get_reward", body)
        statuses[code] = statuses.get(code, 0) + 1
        assert 400 <= code < 500 and code != 404, (code, answer, body[:200])
        assert answer["error"] and (answer["field"] is None or answer["error"].startswith(answer["field"]))
    assert set(statuses) <= {400, 413} and len(statuses) == 2, statuses
    assert server.process.poll() is None
    texts = [text_of(30, 5), text_of(31, 12)]
    assert server.rewards(texts) == pytest.approx(score(*reference, texts).tolist(), abs=1e-5)


def open_body(server: Server, declared: int, sent: bytes) -> "http.client.HTTPConnection":
    """A POST /get_reward that declares a `declared`-byte body and sends only `sent` of it (the rest: `send`)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    connection.putrequest("POST", "/get_reward")
    connection.putheader("Content-Length", str(declared))
    connection.putheader("Authorization", KEY_HEADER["Authorization"])
    connection.endheaders(sent)
    return connection


def answer_of(connection) -> tuple[int, dict]:
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_requests_in_flight_and_buffered_bytes_are_bounded_before_reading(strict_server, reference):
    """3 requests in flight at most, 8,192 bytes of bodies buffered at most: beyond, 503 at once, before the body is
    read (the refused requests below send none); /health answers meanwhile; the held requests are then scored right."""
    served = strict_server
    texts = [text_of(40 + k, 3 + k) for k in range(3)]
    bodies = [json.dumps({"query": [text]}).encode() for text in texts]
    big = 4000  # two bodies of 4,000 bytes fill most of the 8,192-byte budget
    bodies[:2] = [body[:-1] + b" " * (big - len(body)) + b"}" for body in bodies[:2]]
    first_bytes = [100, 100, 10]
    held = [open_body(served, len(body), body[:sent]) for body, sent in zip(bodies[:2], first_bytes)]
    time.sleep(0.5)  # both are being read: 8,000 bytes reserved
    started = time.monotonic()
    code, answer = answer_of(open_body(served, 1000, b""))
    assert (code, answer["field"]) == (503, None) and "--max_buffered_bytes" in answer["error"], answer
    assert served.request("GET", "/health", headers=KEY_HEADER)[0] == 200
    held.append(open_body(served, len(bodies[2]), bodies[2][:first_bytes[2]]))  # the 3rd in flight fits the budget
    time.sleep(0.5)
    code, answer = answer_of(open_body(served, 10, b""))
    assert (code, answer["field"]) == (503, None) and "--max_requests" in answer["error"], answer
    assert time.monotonic() - started < 5 and served.request("GET", "/health", headers=KEY_HEADER)[0] == 200
    for connection, body, sent in zip(held, bodies, first_bytes):
        connection.send(body[sent:])
    answers = [answer_of(connection) for connection in held]
    assert [code for code, _ in answers] == [200] * 3
    assert [answer["rewards"][0] for _, answer in answers] == pytest.approx(score(*reference, texts).tolist(), abs=1e-5)
    assert len(served.rewards(["Human: all released?"], headers=KEY_HEADER)) == 1


def openrlhf_remote_rewards(url: str, queries: list[str]) -> list[float]:
    """OpenRLHF's remote reward client (`utils/remote_rm_utils.py`, `request_api_wrapper`): `requests.post(url,
    json={"query": ..., "prompts": ..., "labels": ...})`, the "rewards" of the answer."""
    import requests

    response = requests.post(url + "/get_reward", json={"query": queries, "prompts": None, "labels": None},
                             headers={"Content-Type": "application/json"}, timeout=180)
    response.raise_for_status()
    return response.json()["rewards"]


def test_openrlhf_chat_queries_padded_or_not_get_the_trained_reward(fleet, chat_reward_dirs):
    """OpenRLHF 0.11.2's PPO posts `decode(prompt_ids + generated_ids, skip_special_tokens=False)`, the generation
    stopping at `<|im_end|>` where training rendered `<|im_end|>\\n`; older releases post `batch_decode` of the padded
    batch (left-padded prompts, right-padded generations; the policy pads with its pad token or its eos). Every form
    gets the reward of the conversation as trained."""
    model, tokenizer = load_for_scoring(chat_reward_dirs["merged"])
    trained = score(model, tokenizer, CHAT_CONVERSATIONS).tolist()
    queries = [openrlhf_query(tokenizer, conversation) for conversation in CHAT_CONVERSATIONS]
    padded = [pad * (k % 3) + query + pad * (1 + k % 2) for k, query in enumerate(queries)
              for pad in ("<|endoftext|>", "<|im_end|>")]
    served = fleet["chat"]
    served.wait_ready()
    assert openrlhf_remote_rewards(served.url, queries) == pytest.approx(trained, abs=1e-5)
    assert openrlhf_remote_rewards(served.url, padded) == pytest.approx([r for r in trained for _ in range(2)], abs=1e-5)
    as_sent = score(model, tokenizer, padded).tolist()  # the pads scored as text: another reward
    assert max(abs(a - b) for a, b in zip(as_sent, [r for r in trained for _ in range(2)])) > 1e-3
    assert len(encode(tokenizer, padded[2])) > len(encode(tokenizer, queries[1]))


def test_strip_pad_false_scores_padding_as_sent(strict_server, server, reference):
    text = text_of(50, 6)
    padded = "<|endoftext|>" * 2 + text + "</s><|endoftext|>"
    as_sent = strict_server.rewards([padded], headers=KEY_HEADER)
    assert as_sent == pytest.approx(score(*reference, [padded]).tolist(), abs=1e-5)
    unpadded = score(*reference, [text + "</s>"]).tolist()
    assert server.rewards([padded]) == pytest.approx(unpadded, abs=1e-5)  # --strip_pad (the default)
    assert abs(as_sent[0] - unpadded[0]) > 1e-3
