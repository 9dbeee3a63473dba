"""The body of `POST /get_reward`: parsed and checked field by field, then tokenized as training tokenizes.

Accepted bodies (OpenRLHF's remote reward model API, plus a conversation form):

    {"query": ["text", ...]}                                         plain texts (prompt + reply)
    {"messages": [[{"role": "user", "content": "..."}, ...], ...]}    conversations, rendered with the chat template

Other top-level fields (OpenRLHF also sends "prompts" and "labels") are ignored. Every error names the field, e.g.
`query[3]: expected a string, got int 5`.
"""

import json
from dataclasses import dataclass

import jinja2

from ..data import Content, PreferenceDataError, content_form, encode, fit_to_length
from ..tokenizer import PAD_CANDIDATES, turn_ending

ELEMENTS = {"query": (str, "a string"), "messages": (list, "a list of {role, content} messages")}
"""The top-level fields that carry what to score (one of them per request): the type and description of an element."""


@dataclass
class RequestError(ValueError):
    """A request the server refuses: answered with `status` and `{"error": message, "field": field}`."""

    status: int
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_json(self) -> dict:
        """The JSON error body: `{"error": "<field>: <message>", "field": <field or null>}`."""
        return {"error": str(self), "field": self.field}


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def parse_reward_request(body: bytes | bytearray, max_texts: int) -> tuple[str, list[Content]]:
    """The texts or conversations of a `/get_reward` body.

    Args:
        body (`bytes` or `bytearray`): the raw request body (UTF-8 JSON).
        max_texts (`int`): the most texts or conversations one request may hold.

    Returns:
        `(form, contents)`: "query" with a list of non-empty strings, or "messages" with a list of non-empty lists of
        `{"role", "content"}` messages (roles and contents checked as training checks them).

    Raises:
        `RequestError`: 400 for a body that is not a JSON object (field "body"), has neither or both of "query" and "messages",
        a non-list or empty list, a wrong element type, an empty text or conversation, a bad message; 413 for more
        than `max_texts` elements. The field is named: `query`, `query[2]`, `messages[0][1].role`.
    """
    try:
        request = json.loads(body)
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise RequestError(400, "body", f"not valid JSON ({error})") from None
    if not isinstance(request, dict):
        raise RequestError(400, "body", f'expected a JSON object {{"query": [texts]}} or {{"messages": [conversations]}}, got {_type_name(request)}')
    present = [form for form in ELEMENTS if form in request]
    if len(present) != 1:
        raise RequestError(400, "query", 'expected exactly one of "query" (a list of texts) or "messages" (a list of conversations)'
                           + (", got both" if present else ", got neither"))
    form = present[0]
    contents = request[form]
    element_type, element = ELEMENTS[form]
    expected = f"a list of {'texts' if form == 'query' else 'conversations'}, each {element}"
    if not isinstance(contents, list):
        raise RequestError(400, form, f"expected {expected}, got {_type_name(contents)}")
    if not contents:
        raise RequestError(400, form, f"expected {expected}, got an empty list")
    if len(contents) > max_texts:
        raise RequestError(413, form, f"{len(contents)} items, more than this server's limit of {max_texts} per request (--max_texts)")
    for index, content in enumerate(contents):
        where = f"{form}[{index}]"
        if not isinstance(content, element_type):
            raise RequestError(400, where, f"expected {element}, got {_type_name(content)}")
        if not content:
            raise RequestError(400, where, "empty " + ("text" if form == "query" else "conversation"))
        try:
            content_form(where, content)  # checks each message's role and content
        except PreferenceDataError as error:  # "field 'messages[0][1].role': expected ..., got ..."
            field, _, message = str(error).removeprefix("field ").partition(": ")
            raise RequestError(400, field.strip("'"), message) from None
        check_unicode(where, content)
    return form, contents


def check_unicode(where: str, value) -> None:
    """Refuse a string anywhere in `value` (a text, or a conversation with its messages' fields) that cannot be
    encoded as UTF-8: a lone UTF-16 surrogate such as the JSON escape "\\ud800", which tokenizers cannot take.

    Raises:
        `RequestError`: 400 naming the field, e.g. `messages[0][1].content`.
    """
    stack = [(where, value)]
    while stack:  # iterative: the nesting of message fields is the client's
        field, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise RequestError(400, field, f"not valid Unicode: a lone UTF-16 surrogate {item[error.start]!r} at "
                                   f"character {error.start}") from None
        elif isinstance(item, list):
            stack.extend((f"{field}[{index}]", element) for index, element in enumerate(item))
        elif isinstance(item, dict):
            for key, element in item.items():
                stack.append((f"{field}.{key.encode('utf-8', 'backslashreplace').decode()}", element))
                stack.append((f"{field} (a key)", key))


@dataclass(frozen=True)
class Padding:
    """The token strings `strip_padding` removes from the ends of a query text.

    Attributes:
        tokens (`tuple[str, ...]`): every padding token, longest first: the pad token, the eos, the chat template's
            end-of-turn token, and the `PAD_CANDIDATES` that are special tokens of the tokenizer (never the BOS).
        endings (`frozenset[str]`): those that end a finished generation (the eos, the end-of-turn token).
    """

    tokens: tuple[str, ...]
    endings: frozenset[str]

    @classmethod
    def of(cls, tokenizer) -> "Padding":
        """The padding tokens of the served model's tokenizer."""
        ending = turn_ending(tokenizer)
        endings = {tokenizer.eos_token, ending[0] if ending else None} - {None}
        special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        special |= set(tokenizer.all_special_tokens)
        tokens = ({tokenizer.pad_token} | endings | (special & set(PAD_CANDIDATES))) - {None, "", tokenizer.bos_token}
        return cls(tuple(sorted(tokens, key=len, reverse=True)), frozenset(endings))


def strip_padding(text: str, padding: Padding) -> str:
    """A query text without the padding a batched client left at its ends.

    Older OpenRLHF releases post `batch_decode(padded sequences, skip_special_tokens=False)`: left-padded prompts and
    right-padded generations, so the pad (often the policy's eos) is text at both ends, and the reward would depend on
    how the batch was padded. Their own `serve_rm` stripped leading and trailing pad and eos runs; so does this, except
    that a trailing run holding an ending (eos or end-of-turn token) keeps its first one: that is where a finished
    generation ended, and where the reward of a model trained so is read.

    Args:
        text (`str`): one query text.
        padding (`Padding`): the tokens to strip (`Padding.of(tokenizer)`).

    Returns:
        `str`: `text` without leading padding tokens and with its trailing run of them replaced by the run's first
        ending token (nothing when the run holds none). A text with no padding at its ends is returned unchanged.
    """
    def token_at(start: int, end: int, at_end: bool) -> str | None:
        match = text.endswith if at_end else text.startswith
        return next((token for token in padding.tokens if match(token, start, end)), None)

    start, end = 0, len(text)
    while start < end and (token := token_at(start, end, at_end=False)):
        start += len(token)
    kept = ""
    while start < end and (token := token_at(start, end, at_end=True)):
        end -= len(token)
        kept = token if token in padding.endings else kept
    return text[start:end] + kept


PROBE_CHARACTERS_PER_TOKEN = 16
"""A text longer than `max_length` times this many characters is tokenized only that far (a few MiB of text would
take seconds and about 1 GB): without `--truncate`, its beginning, and when those characters alone make more than
`max_length` (+ `PROBE_MARGIN`) tokens, it is refused; with `--truncate`, a query text's end, and when it makes more
than `max_length` + `PROBE_MARGIN` tokens, the cut keeps the last of them (the tokens of a text's end do not depend on
text `PROBE_MARGIN` tokens before them: tokenizers split words apart first). Otherwise the text is tokenized whole."""

PROBE_MARGIN = 32
"""Tokens allowed for the word cut where a probed window starts or ends (a cut word may make more tokens than whole)."""


def probe_length(tokenizer, content: Content, max_length: int) -> int | None:
    """The token count of the first `max_length * PROBE_CHARACTERS_PER_TOKEN` characters of a long text (the
    messages' contents joined, for a conversation), or None for a shorter text."""
    limit = max_length * PROBE_CHARACTERS_PER_TOKEN
    pieces = [content] if isinstance(content, str) else [message["content"] for message in content]
    if sum(len(piece) for piece in pieces) <= limit:
        return None
    prefix, size = [], 0
    for piece in pieces:
        prefix.append(piece[: limit - size])
        size += len(prefix[-1])
        if size >= limit:
            break
    return len(tokenizer("\n".join(prefix), add_special_tokens=False)["input_ids"])


def encode_contents(tokenizer, form: str, contents: list[Content], max_length: int, truncate: bool,
                    padding: Padding | None = None) -> list[list[int]]:
    """Token ids of each text or conversation, exactly as `bt_peft.score` makes them (`encode`, then `fit_to_length`).

    Args:
        tokenizer: the served model's tokenizer.
        form (`str`): "query" or "messages", for error messages.
        contents (`list`): what `parse_reward_request` returned.
        max_length (`int`): the most tokens per text.
        truncate (`bool`): cut longer texts from the left keeping the leading special tokens, as training does
            (`score(..., max_length=max_length)` gives the same rewards; a long query text is tokenized from its end
            only, `PROBE_CHARACTERS_PER_TOKEN`); otherwise refuse them, a long text after tokenizing only its
            beginning (`probe_length`).
        padding (`Padding`, *optional*): strip these from the ends of each query text first (`strip_padding`).

    Returns:
        `list[list[int]]`: one list of token ids per element, each 1 to `max_length` ids long.

    Raises:
        `RequestError`: 413 naming the first text longer than `max_length` (without `truncate`); 400 for a text that
        makes no tokens or holds nothing but padding, conversations on a tokenizer without a chat template, or one its
        template refuses (e.g. roles that do not alternate).
    """
    if form == "messages" and tokenizer.chat_template is None:
        raise RequestError(400, "messages", "this model's tokenizer has no chat template to render conversations "
                           'with; send {"query": [texts]} instead')
    special_prefix = encode(tokenizer, "")
    refusal = (f"more than this server's limit of {max_length} (--max_length; --truncate cuts long texts from the "
               "left instead)")
    sequences = []
    for index, content in enumerate(contents):
        where = f"{form}[{index}]"
        if padding is not None and isinstance(content, str):
            content = strip_padding(content, padding)
            if not content:
                raise RequestError(400, where, f"nothing but padding tokens ({', '.join(padding.tokens)}; --strip_pad)")
        if not truncate and (probed := probe_length(tokenizer, content, max_length)) is not None \
                and probed > max_length + PROBE_MARGIN:
            raise RequestError(413, where, f"its first {max_length * PROBE_CHARACTERS_PER_TOKEN} characters alone make "
                               f"{probed} tokens, {refusal}")
        ids = None
        if truncate and isinstance(content, str) and len(content) > max_length * PROBE_CHARACTERS_PER_TOKEN:
            ids = encode(tokenizer, content[-max_length * PROBE_CHARACTERS_PER_TOKEN:])  # what the cut keeps, and more
            if len(ids) <= max_length + PROBE_MARGIN:  # too few tokens to be sure: the whole text
                ids = None
        try:
            ids = encode(tokenizer, content) if ids is None else ids
        except jinja2.TemplateError as error:  # the template's own raise_exception, e.g. on roles out of order
            raise RequestError(400, where, f"the chat template refuses this conversation: {error}") from None
        if len(ids) > max_length and not truncate:
            raise RequestError(413, where, f"{len(ids)} tokens, {refusal}")
        if not ids:
            raise RequestError(400, where, "makes no tokens")
        sequences.append(fit_to_length(ids, max_length, special_prefix))
    return sequences
