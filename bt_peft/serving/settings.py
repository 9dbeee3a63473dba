"""The settings of `bt-peft serve`: one dataclass, parsed by the command line (`HfArgumentParser`) and read by the
server. Imports nothing heavy, so `bt-peft serve --help` answers at once."""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MAX_LENGTH = 4096
"""`--max_length` of a model that records no training `max_length` (`bt_peft.tokenizer.trained_max_length`)."""
API_KEY_ENV = "BT_PEFT_API_KEY"
"""Environment variable holding the API key (preferred to `--api_key`, which other users can read in `ps`)."""


@dataclass
class ServeSettings:
    """Options of `bt-peft serve MODEL`."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 127.0.0.1 serves this machine only (0.0.0.0: every interface)"})
    port: int = field(default=5000, metadata={"help": "TCP port"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "weights' dtype (4-bit compute dtype with --load_in_4bit or an adapter directory); auto: the model's own, a checkpoint's saved dtype (a bf16 merge stays bf16) or an adapter's training compute dtype"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or cuda:N (default: the GPU if there is one, else the CPU)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load a checkpoint's body in 4-bit NF4 (an adapter's base always is)"})
    max_length: int | None = field(default=None, metadata={"help": f"the most tokens per text; longer texts are refused with 413 naming the text, or cut with --truncate (default: the max_length the model was trained with, saved with its tokenizer; {DEFAULT_MAX_LENGTH} when none is saved)"})
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
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.token_budget < (self.max_length or 0):
            raise ValueError(f"--token_budget ({self.token_budget}) must be at least --max_length ({self.max_length})")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(f"--max_buffered_bytes ({self.max_buffered_bytes}) must be at least --max_body_bytes "
                             f"({self.max_body_bytes})")
        if self.max_texts > self.max_queue:
            raise ValueError(f"--max_texts ({self.max_texts}) must be at most --max_queue ({self.max_queue})")

    def for_model(self, trained_max_length: int | None) -> "ServeSettings":
        """These settings with `--max_length` filled in for the loaded model when not given: `trained_max_length`
        (what the model was trained with), else `DEFAULT_MAX_LENGTH`.

        Raises:
            `ValueError` when that length exceeds `--token_budget`, naming both and the flag to pass.
        """
        if self.max_length is not None:
            return self
        max_length = trained_max_length or DEFAULT_MAX_LENGTH
        if max_length > self.token_budget:
            raise ValueError(f"the model was trained with max_length {max_length} (saved with its tokenizer), more than "
                             f"--token_budget ({self.token_budget}): pass --token_budget {max_length} or more, or a "
                             "smaller --max_length")
        return dataclasses.replace(self, max_length=max_length)
