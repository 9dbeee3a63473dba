"""The settings of `bt-peft serve`: one dataclass, parsed by the command line (`HfArgumentParser`) and read by the
server. Imports nothing heavy, so `bt-peft serve --help` answers at once."""

import os
from dataclasses import dataclass, field
from typing import Literal

API_KEY_ENV = "BT_PEFT_API_KEY"
"""Environment variable holding the API key (preferred to `--api_key`, which other users can read in `ps`)."""


@dataclass
class ServeSettings:
    """Options of `bt-peft serve MODEL`."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 127.0.0.1 serves this machine only (0.0.0.0: every interface)"})
    port: int = field(default=5000, metadata={"help": "TCP port"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights' dtype (4-bit compute dtype with --load_in_4bit or an adapter directory)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or cuda:N (default: the GPU if there is one, else the CPU)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load a checkpoint's body in 4-bit NF4 (an adapter's base always is)"})
    max_length: int = field(default=4096, metadata={"help": "the most tokens per text; longer texts are refused with 413 naming the text, or cut with --truncate"})
    truncate: bool = field(default=False, metadata={"help": "cut texts longer than --max_length from the left, as training does, instead of refusing them"})
    strip_pad: bool = field(default=True, metadata={"help": "remove padding tokens (pad, eos, end-of-turn, unused pad tokens) from both ends of each query text, as clients that post padded batches need; a trailing run keeps its first eos or end-of-turn token (--strip_pad false: score texts as sent)"})
    token_budget: int = field(default=16384, metadata={"help": "the most padded tokens per forward (batch size x longest text); at least --max_length"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "how long a text may wait for others to join its batch"})
    max_queue: int = field(default=1024, metadata={"help": "the most texts waiting to be scored; beyond, requests get 503 (retry later)"})
    max_texts: int = field(default=256, metadata={"help": "the most texts per request (413 beyond); at most --max_queue"})
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata={"help": "the largest request body in bytes (413 beyond)"})
    max_requests: int = field(default=1024, metadata={"help": "the most /get_reward requests in flight (read, tokenized, waiting or scored); beyond, 503 before reading the body"})
    max_buffered_bytes: int = field(default=64 * 1024 * 1024, metadata={"help": "the most bytes of request bodies held between reading and tokenizing; beyond, 503 (at least --max_body_bytes)"})
    api_key: str | None = field(default=None, metadata={"help": f"require 'Authorization: Bearer KEY' on every request (default: ${API_KEY_ENV}; unset: no key)"})
    log_level: Literal["debug", "info", "warning", "error"] = field(default="info", metadata={"help": "server log level"})

    def __post_init__(self) -> None:
        """Take the API key from the environment when not given; check that the limits fit together.

        Raises:
            `ValueError` naming the flag that is out of range.
        """
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for name in ("max_length", "token_budget", "max_queue", "max_texts", "max_body_bytes", "max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.token_budget < self.max_length:
            raise ValueError(f"--token_budget ({self.token_budget}) must be at least --max_length ({self.max_length})")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(f"--max_buffered_bytes ({self.max_buffered_bytes}) must be at least --max_body_bytes "
                             f"({self.max_body_bytes})")
        if self.max_texts > self.max_queue:
            raise ValueError(f"--max_texts ({self.max_texts}) must be at most --max_queue ({self.max_queue})")
