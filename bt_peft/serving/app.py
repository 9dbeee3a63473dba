"""The ASGI app of `bt-peft serve` (Starlette) and the process that runs it (uvicorn).

    POST /get_reward   {"query": [texts]} or {"messages": [conversations]}  ->  {"rewards": [floats]}
    GET  /health       {"status": "ok", "waiting": <texts waiting to be scored>}

Errors are JSON, `{"error": "<field>: <what is wrong>", "field": <field or null>}`: 400 bad body, 401 missing or wrong
API key, 404/405 unknown route or method, 413 body, text count or text length over the limits, 503 too many requests
in flight, too many body bytes buffered or the queue is full (retry later; all three before tokenizing) or the server
is stopping, 500 the model failed on a batch (the server keeps serving).
"""

import asyncio
import contextlib
import hmac
import logging
import math
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..evaluation.scoring import score_ids
from ..tokenizer import trained_max_length
from .admission import Admission
from .batching import MicroBatcher, Unavailable
from .requests import Padding, RequestError, encode_contents, parse_reward_request
from .settings import ServeSettings

logger = logging.getLogger(__name__)


class BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <api_key>` (compared in constant time), else
    401 with a JSON error."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = RequestError(401, "Authorization", "expected the header 'Authorization: Bearer <API key>' with this server's key")
                response = JSONResponse(error.to_json(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model, tokenizer, settings: ServeSettings) -> Starlette:
    """The reward server's ASGI app over a loaded model.

    Args:
        model, tokenizer: as `load_served_model` returns them (a 2-label model; pad ids equal).
        settings (`ServeSettings`): limits, batching and the API key (`None`: no key); an unset `max_length` is the
            model's training one (`ServeSettings.for_model`).

    Returns:
        `Starlette`: its lifespan starts the `MicroBatcher` (the model runs in the batcher's one worker thread) and,
        at shutdown, scores what was submitted before stopping it. Request bodies are parsed and tokenized in one
        other thread (a fast tokenizer must not be called from several threads at once), so the event loop never
        waits on either.
    """
    settings = settings.for_model(trained_max_length(tokenizer))

    def score_batch(sequences: list[list[int]]) -> list[float]:
        return score_ids(model, tokenizer, sequences, batch_size=len(sequences)).tolist()

    batcher = MicroBatcher(score_batch, settings.token_budget, settings.max_wait_ms / 1000, settings.max_queue)
    padding = Padding.of(tokenizer) if settings.strip_pad else None
    admission = Admission(settings.max_requests, settings.max_buffered_bytes, settings.max_body_bytes)

    def prepare(body: bytearray) -> tuple[str, list[list[int]]]:
        form, contents = parse_reward_request(body, settings.max_texts)
        batcher.check_room(len(contents))  # a full queue refuses before tokenizing (submit checks again)
        return form, encode_contents(tokenizer, form, contents, settings.max_length, settings.truncate, padding)

    tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-peft-tokenizer")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        tokenizing.shutdown(wait=True)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "waiting": batcher.waiting})

    async def get_reward(request: Request) -> JSONResponse:
        with admission.request():
            try:
                async with admission.body(request) as body:
                    form, sequences = await asyncio.get_running_loop().run_in_executor(tokenizing, prepare, body)
                rewards = await batcher.submit(sequences)
            except Unavailable as error:
                raise RequestError(503, None, f"{error}; retry later") from None
        for index, reward in enumerate(rewards):
            if not math.isfinite(reward):
                raise RequestError(500, f"{form}[{index}]", f"the model gave a non-finite reward ({reward})")
        return JSONResponse({"rewards": rewards})

    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.to_json(), status_code=error.status, headers=headers)

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail, "field": None}, status_code=error.status_code, headers=error.headers)

    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("scoring failed")
        return JSONResponse({"error": f"scoring failed: {type(error).__name__}: {error}", "field": None}, status_code=500)

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/get_reward", get_reward, methods=["POST"])],
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    if settings.api_key:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    return app


def exit_cleanly(signum: int, frame) -> None:
    """SIGTERM/SIGINT handler outside uvicorn's: uvicorn drains in-flight requests on the signal, then raises it
    again with the previous handler in place; this one makes that an exit with status 0."""
    raise SystemExit(0)


def run_server(model_name: str, settings: ServeSettings) -> None:
    """Load `model_name` with `load_served_model` and serve it until SIGTERM or SIGINT.

    On the signal, uvicorn stops accepting connections, lets in-flight requests finish (their texts are scored),
    then the lifespan stops the batcher and the process exits with status 0.
    """
    import uvicorn

    from .model import load_served_model

    model, tokenizer = load_served_model(model_name, settings.dtype, settings.device, settings.load_in_4bit)
    app = create_app(model, tokenizer, settings)
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, exit_cleanly)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    uvicorn.Server(config).run()
