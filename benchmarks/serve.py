"""Serving throughput: `bt-peft serve` with 1, 8 and 64 concurrent clients against one-at-a-time scoring; and the
server's memory under a flood of large requests (`--flood`).

    python benchmarks/serve.py                                   # the demo's merged model, 128 HH dev texts
    python benchmarks/serve.py outputs/demo-smollm2/merged --texts 64 --repeats 3 --clients 1,8,64
    python benchmarks/serve.py --flood                           # 48 clients posting ~6 MiB each at once
    python benchmarks/serve.py --flood --server-flags=--truncate # the same against `bt-peft serve --truncate`

Arms, on the same texts (the chosen side of the first `--texts` pairs of the HH-RLHF harmless-base dev split, cut to
`--max-length` tokens from the left as training cuts them):
    one-at-a-time   in this process, `bt_peft.score(model, tokenizer, [text])`: one text per call, one call after another
    batched         in this process, one `bt_peft.score` call on all texts in batches of `--token-budget` / `--max-length`
                    texts (the batches the server's token budget allows at most): what batching alone gains on this
                    hardware, with no server and no waiting for requests; every text's latency is the whole call
    serve, N        a `bt-peft serve` process (`--truncate --max_length` the same), N client threads each posting one
                    text per request to /get_reward (urllib), until every text is scored
Printed per arm and repeat: texts/s (texts over wall time), p50 and p99 latency of one call or request, texts per
CPU-second of the scoring process (this process for one-at-a-time, the server's for serve; Linux `/proc`), the
ratios of both throughputs to one-at-a-time in the same repeat, and the largest difference between the served and
in-process rewards. On a CPU shared with other work, wall time measures the other work too; CPU time much less. The arms
run interleaved (each repeat runs every arm once), so slow phases of a shared CPU hit all arms alike; the summary
gives the median of the repeats. With `--output FILE`, everything is written as JSON.

With `--flood`: a `bt-peft serve` process (its default limits, plus `--server-flags`) on a tiny random reward model with
SmolLM2's tokenizer (built in a temporary directory; no data or MODEL needed). After a few ordinary requests, the
server's peak RSS is reset (`/proc/<pid>/clear_refs`); then `--flood-clients` threads post one body of
`--flood-mib` MiB each (one text of words), all at once, while another thread asks `/health` every 0.1 s. Printed: the
server's RSS before the flood and its peak during it, the status of every flood request (a client whose connection
the server closed before the body was sent counts as "closed", one unanswered after `--flood-timeout` seconds as
"timeout"), how many `/health` requests were answered and how fast,
and whether the server still scores a text right afterwards.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bt_peft import load_for_scoring, score
from bt_peft.data import load_preference_file
from hh_data import SHARED_HH_DIR

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "outputs/demo-smollm2/merged"
DEFAULT_DATA = SHARED_HH_DIR / "dev.jsonl"


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all threads (Linux `/proc/<pid>/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(name: str, seconds: float, cpu: float, latencies: list[float]) -> dict:
    return {"arm": name, "texts_per_s": len(latencies) / seconds, "texts_per_cpu_s": len(latencies) / cpu,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
            "seconds": seconds, "cpu_seconds": cpu}


def one_at_a_time(model, tokenizer, texts: list[str], max_length: int) -> tuple[dict, list[float]]:
    """Score each text alone, one call after another, in this process."""
    rewards, latencies = [], []
    start, cpu_start = time.perf_counter(), cpu_seconds(os.getpid())
    for text in texts:
        began = time.perf_counter()
        rewards.append(score(model, tokenizer, [text], max_length=max_length).item())
        latencies.append(time.perf_counter() - began)
    return summary("one-at-a-time", time.perf_counter() - start, cpu_seconds(os.getpid()) - cpu_start, latencies), rewards


def batched(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> tuple[dict, list[float]]:
    """Score every text in one call, `batch_size` texts per forward, in this process."""
    start, cpu_start = time.perf_counter(), cpu_seconds(os.getpid())
    rewards = score(model, tokenizer, texts, batch_size=batch_size, max_length=max_length).tolist()
    seconds = time.perf_counter() - start
    return summary("batched", seconds, cpu_seconds(os.getpid()) - cpu_start, [seconds] * len(texts)), rewards


def post(url: str, texts: list[str]) -> list[float]:
    request = urllib.request.Request(url + "/get_reward", data=json.dumps({"query": texts}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["rewards"]


def served(url: str, server_pid: int, texts: list[str], clients: int) -> tuple[dict, list[float]]:
    """`clients` threads post one text per request until every text is scored."""
    rewards: list[float] = [0.0] * len(texts)
    latencies: list[float] = [0.0] * len(texts)

    def client(offset: int) -> None:
        for index in range(offset, len(texts), clients):
            began = time.perf_counter()
            rewards[index] = post(url, [texts[index]])[0]
            latencies[index] = time.perf_counter() - began

    start, cpu_start = time.perf_counter(), cpu_seconds(server_pid)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall, cpu = time.perf_counter() - start, cpu_seconds(server_pid) - cpu_start
    return summary(f"serve, {clients} clients", wall, cpu, latencies), rewards


def start_server(model: str, flags: list[str]) -> tuple[subprocess.Popen, str]:
    """Start `bt-peft serve model --port <free port> *flags` from this checkout and wait for /health."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "bt_peft.cli", "serve", model, "--port", str(port), *flags]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(command, cwd=ROOT, env=os.environ | {"PYTHONPATH": python_path})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bt-peft serve exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("bt-peft serve did not answer /health within 300 s")


def tiny_reward_model(directory: Path) -> Path:
    """A random 2-layer reward model (hidden size 64) with SmolLM2's tokenizer, saved in `directory`."""
    from transformers import LlamaConfig

    from bt_peft import AutoModelForBradleyTerry
    from bt_peft.embedded import EMBEDDED_MODEL, resolve_model
    from bt_peft.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(resolve_model(EMBEDDED_MODEL))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForBradleyTerry.from_config(config)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid` in KiB (Linux `/proc/<pid>/status`)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def post_raw(url: str, body: bytes, timeout: float) -> str:
    """POST `body` to /get_reward; the status code, "closed" when the server closed the connection first, or
    "timeout" when no answer came within `timeout` seconds."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", "/get_reward", body=body, headers={"Content-Type": "application/json"})
        return str(connection.getresponse().status)
    except (BrokenPipeError, ConnectionResetError):
        return "closed"
    except TimeoutError:
        return "timeout"
    finally:
        connection.close()


def flood(args: argparse.Namespace) -> None:
    """The `--flood` benchmark (see the module docstring)."""
    import tempfile
    import threading

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = tiny_reward_model(Path(scratch) / "tiny")
        extra = args.server_flags.split() if args.server_flags else []
        process, url = start_server(str(model_dir), ["--log_level", "warning", *extra])
        try:
            words = "the reward of this reply is read at its last token . "
            text = words * (args.flood_mib * 1024 * 1024 // len(words))
            body = json.dumps({"query": [text]}).encode()
            probe = ["Human: is the server still right? Assistant: yes"]
            before_flood = post(url, probe)
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # reset the peak RSS
            before = memory_kib(process.pid)
            health: list[tuple[float, str]] = []
            done = threading.Event()

            def poll_health() -> None:
                while not done.is_set():
                    began = time.perf_counter()
                    try:
                        with urllib.request.urlopen(url + "/health", timeout=30) as response:
                            outcome = str(response.status)
                    except OSError as error:
                        outcome = type(error).__name__
                    health.append((time.perf_counter() - began, outcome))
                    time.sleep(0.1)

            poller = threading.Thread(target=poll_health)
            barrier = threading.Barrier(args.flood_clients)

            def client(_: int) -> str:
                barrier.wait()
                return post_raw(url, body, args.flood_timeout)

            started = time.perf_counter()
            poller.start()
            with ThreadPoolExecutor(args.flood_clients) as pool:
                statuses = list(pool.map(client, range(args.flood_clients)))
            seconds = time.perf_counter() - started
            done.set()
            poller.join()
            after = memory_kib(process.pid)
            still_right = post(url, probe) == before_flood
        finally:
            process.kill()  # not SIGTERM: a server still working through the flood would drain it first
            process.wait(timeout=120)
    answered = [latency for latency, outcome in health if outcome == "200"]
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"flood: {args.flood_clients} clients x {len(body) / 2**20:.1f} MiB ({args.flood_clients * len(body) / 1e6:.0f} MB of "
          f"bodies) against `bt-peft serve {' '.join(extra)}` in {seconds:.1f} s")
    print(f"  server RSS before {before['VmRSS'] / 1024:.0f} MiB, peak during the flood {after['VmHWM'] / 1024:.0f} MiB "
          f"(+{(after['VmHWM'] - before['VmRSS']) / 1024:.0f} MiB), after {after['VmRSS'] / 1024:.0f} MiB")
    print(f"  flood statuses: {counts}")
    print(f"  /health during the flood: {len(answered)} of {len(health)} answered, p50 "
          f"{1000 * percentile(answered, 0.5) if answered else float('nan'):.0f} ms, max "
          f"{1000 * max(answered) if answered else float('nan'):.0f} ms; reward after the flood unchanged: {still_right}")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "seconds": seconds, "before_kib": before,
                                                 "after_kib": after, "statuses": counts, "health": health,
                                                 "still_right": still_right}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"reward model directory (default {DEFAULT_MODEL})")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="preference pairs (.jsonl); the chosen texts are scored")
    parser.add_argument("--texts", type=int, default=128, help="number of texts")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (cut from the left)")
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients of each serve arm")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all arms, interleaved")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", help="where both sides score: cpu, cuda or cuda:N")
    parser.add_argument("--token-budget", type=int, default=8192, help="the server's --token_budget")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max_wait_ms")
    parser.add_argument("--output", help="write the results as JSON")
    parser.add_argument("--flood", action="store_true", help="measure the server's memory under a flood of large requests instead")
    parser.add_argument("--flood-clients", type=int, default=48, help="concurrent clients of the flood")
    parser.add_argument("--flood-mib", type=int, default=6, help="MiB posted by each flood client")
    parser.add_argument("--flood-timeout", type=float, default=300, help="seconds a flood client waits for its answer")
    parser.add_argument("--server-flags", default="", help="more `bt-peft serve` flags for the flood, e.g. --truncate")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop the server on the way out
    if args.flood:
        flood(args)
        return

    model_dir = str(ROOT / args.model) if not Path(args.model).is_absolute() else args.model
    rows = load_preference_file(args.data)
    texts = [row["chosen"] for row in rows.select(range(min(args.texts, len(rows))))]
    model, tokenizer = load_for_scoring(model_dir, compute_dtype=getattr(torch, args.dtype), device_map={"": args.device})
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    print(f"{len(texts)} texts, {min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths):.0f}) before "
          f"cutting to {args.max_length}; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, device {args.device}", flush=True)
    process, url = start_server(model_dir, ["--truncate", "--max_length", str(args.max_length), "--dtype", args.dtype,
                                            "--device", args.device, "--token_budget", str(args.token_budget),
                                            "--max_wait_ms", str(args.max_wait_ms), "--log_level", "warning"])
    clients = [int(count) for count in args.clients.split(",")]
    results = []
    try:
        score(model, tokenizer, texts[:4], max_length=args.max_length)  # warm-up, both sides
        post(url, texts[:4])
        for repeat in range(args.repeats):
            baseline, expected = one_at_a_time(model, tokenizer, texts, args.max_length)
            arms = [baseline]
            arm, rewards = batched(model, tokenizer, texts, args.max_length, max(1, args.token_budget // args.max_length))
            arm["max_abs_reward_diff"] = max(abs(a - b) for a, b in zip(rewards, expected))
            arms.append(arm)
            for count in clients:
                arm, rewards = served(url, process.pid, texts, count)
                arm["max_abs_reward_diff"] = max(abs(a - b) for a, b in zip(rewards, expected))
                arms.append(arm)
            for arm in arms:
                arm |= {"repeat": repeat, "speedup": arm["texts_per_s"] / baseline["texts_per_s"],
                        "cpu_speedup": arm["texts_per_cpu_s"] / baseline["texts_per_cpu_s"]}
                difference = f"  max |reward - one-at-a-time| {arm['max_abs_reward_diff']:.1e}" if "max_abs_reward_diff" in arm else ""
                print(f"repeat {repeat}  {arm['arm']:<18} {arm['texts_per_s']:7.2f} texts/s (x{arm['speedup']:.2f})  "
                      f"p50 {arm['p50_ms']:8.1f} ms  p99 {arm['p99_ms']:8.1f} ms  {arm['texts_per_cpu_s']:6.2f} texts/CPU-s "
                      f"(x{arm['cpu_speedup']:.2f}){difference}", flush=True)
            results += arms
    finally:
        process.terminate()
        process.wait(timeout=120)
    print("\nmedian over repeats:")
    for name in dict.fromkeys(arm["arm"] for arm in results):
        arms = [arm for arm in results if arm["arm"] == name]
        keys = ("texts_per_s", "speedup", "p50_ms", "p99_ms", "texts_per_cpu_s", "cpu_speedup")
        median = {key: statistics.median(arm[key] for arm in arms) for key in keys}
        print(f"  {name:<18} {median['texts_per_s']:7.2f} texts/s (x{median['speedup']:.2f})  p50 {median['p50_ms']:8.1f} ms  "
              f"p99 {median['p99_ms']:8.1f} ms  {median['texts_per_cpu_s']:6.2f} texts/CPU-s (x{median['cpu_speedup']:.2f})")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
