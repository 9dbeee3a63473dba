"""Dynamic micro-batching: token sequences from concurrent requests are gathered for a short time, sorted by length
and scored in batches under a token budget, one batch at a time in a single worker thread."""

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class Unavailable(RuntimeError):
    """The batcher takes no more sequences now: the request should be retried later (503)."""


class QueueFullError(Unavailable):
    """The batcher already holds as many waiting sequences as it may."""


def plan_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group sequences into batches by length, each within a token budget.

    Args:
        lengths (`Sequence[int]`): the number of tokens of each sequence.
        token_budget (`int`): the most padded tokens of one batch: its size times its longest sequence. A sequence
            longer than the budget alone makes a batch of one.

    Returns:
        `list[list[int]]`: indices into `lengths`, shortest sequences first; every index exactly once.
    """
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[index] <= token_budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


@dataclass
class _Pending:
    """One sequence waiting for its reward."""

    ids: list[int]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Scores sequences submitted by concurrent requests in length-sorted batches under a token budget.

    The batcher's loop waits for a first sequence, then up to `max_wait_s` after it (less once the waiting sequences
    fill a batch) for more; takes every waiting sequence, splits them with `plan_batches` and runs `score_batch` on
    each batch in one worker thread, so the event loop never blocks on the model. Sequences that arrive meanwhile
    form the next round. At most `max_queue` sequences wait (not counting the round being scored): `submit` raises
    `QueueFullError` beyond that instead of letting the queue grow.

    Args:
        score_batch (`Callable[[list[list[int]]], Sequence[float]]`): rewards of a batch of token-id lists, in order.
        token_budget (`int`): the most padded tokens per batch (`plan_batches`).
        max_wait_s (`float`): how long the first waiting sequence may wait for others to join its batch.
        max_queue (`int`): the most sequences waiting to be scored.
    """

    def __init__(self, score_batch: Callable[[list[list[int]]], Sequence[float]], token_budget: int, max_wait_s: float,
                 max_queue: int):
        if token_budget < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"token_budget and max_queue must be >= 1 and max_wait_s >= 0, got {token_budget}, "
                             f"{max_queue} and {max_wait_s}")
        self.score_batch = score_batch
        self.token_budget = token_budget
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._waiting: list[_Pending] = []
        self._arrival = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-peft-model")
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Score everything already submitted, then stop the loop and the worker thread."""
        self._closing = True
        self._arrival.set()
        if self._loop_task is not None:
            await self._loop_task
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """The number of sequences waiting for a round (not counting the one being scored)."""
        return len(self._waiting)

    def check_room(self, count: int) -> None:
        """Raise `QueueFullError` when `count` more sequences would make more than `max_queue` wait (safe to call from
        another thread: it only reads the queue's length)."""
        if len(self._waiting) + count > self.max_queue:
            raise QueueFullError(f"{len(self._waiting)} texts are waiting to be scored (at most {self.max_queue})")

    async def submit(self, sequences: Sequence[list[int]]) -> list[float]:
        """Rewards of token-id sequences, scored together with other requests' sequences.

        Returns:
            `list[float]`: one reward per sequence, in order.

        Raises:
            `QueueFullError`: accepting the sequences would make more than `max_queue` wait (nothing is queued).
            `Unavailable`: the batcher is stopping. Whatever `score_batch` raised for a batch holding a sequence.
        """
        if self._closing:
            raise Unavailable("the server is shutting down")
        if self._loop_task is None or self._loop_task.done():  # not started, or died: never queue what nothing scores
            raise Unavailable("the batching loop is not running")
        self.check_room(len(sequences))
        loop = asyncio.get_running_loop()
        pending = [_Pending(ids, loop.create_future()) for ids in sequences]
        self._waiting.extend(pending)
        self._arrival.set()
        return list(await asyncio.gather(*(item.future for item in pending)))

    async def _gather_round(self) -> list[_Pending]:
        """Wait for a first sequence, then for more until it has waited `max_wait_s` or a batch is full; take all."""
        while not self._waiting:
            if self._closing:
                return []
            self._arrival.clear()
            await self._arrival.wait()
        deadline = self._waiting[0].arrived + self.max_wait_s
        while not self._closing and sum(len(item.ids) for item in self._waiting) < self.token_budget:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                break
        taken, self._waiting = self._waiting, []
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while round_ := await self._gather_round():
            for batch_indices in plan_batches([len(item.ids) for item in round_], self.token_budget):
                batch = [round_[index] for index in batch_indices if not round_[index].future.done()]
                if not batch:  # every request of this batch went away (client disconnected)
                    continue
                try:
                    rewards = await loop.run_in_executor(self._executor, self.score_batch, [item.ids for item in batch])
                except Exception as error:  # the request fails, the server keeps serving
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
                    continue
                for item, reward in zip(batch, rewards):
                    if not item.future.done():
                        item.future.set_result(float(reward))
