"""The body of `POST /get_reward`: parsed and checked field by field, then tokenized as training tokenizes.

Accepted bodies (OpenRLHF's remote reward model API, plus a conversation form):

    {"query": ["text", ...]}                                         plain texts (prompt + reply)
    {"messages": [[{"role": "user", "content": "..."}, ...], ...]}    conversations, rendered with the chat template

Other top-level fields (OpenRLHF also sends "prompts" and "labels") are ignored. Every error names the field, e.g.
`query[3]: expected a string, got int 5`.
"""

import json
from dataclasses import dataclass

from ..data import Content, PreferenceDataError, content_form, encode, fit_to_length

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


def parse_reward_request(body: bytes, max_texts: int) -> tuple[str, list[Content]]:
    """The texts or conversations of a `/get_reward` body.

    Args:
        body (`bytes`): the raw request body (UTF-8 JSON).
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
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
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
    return form, contents


def encode_contents(tokenizer, form: str, contents: list[Content], max_length: int, truncate: bool) -> list[list[int]]:
    """Token ids of each text or conversation, exactly as `bt_peft.score` makes them (`encode`, then `fit_to_length`).

    Args:
        tokenizer: the served model's tokenizer.
        form (`str`): "query" or "messages", for error messages.
        contents (`list`): what `parse_reward_request` returned.
        max_length (`int`): the most tokens per text.
        truncate (`bool`): cut longer texts from the left keeping the leading special tokens, as training does
            (`score(..., max_length=max_length)` gives the same rewards); otherwise refuse them.

    Returns:
        `list[list[int]]`: one list of token ids per element, each 1 to `max_length` ids long.

    Raises:
        `RequestError`: 413 naming the first text longer than `max_length` (without `truncate`); 400 for a text that
        makes no tokens.
    """
    special_prefix = encode(tokenizer, "")
    sequences = []
    for index, content in enumerate(contents):
        ids = encode(tokenizer, content)
        if len(ids) > max_length and not truncate:
            raise RequestError(413, f"{form}[{index}]", f"{len(ids)} tokens, more than this server's limit of "
                               f"{max_length} (--max_length; --truncate cuts long texts from the left instead)")
        if not ids:
            raise RequestError(400, f"{form}[{index}]", "makes no tokens")
        sequences.append(fit_to_length(ids, max_length, special_prefix))
    return sequences
