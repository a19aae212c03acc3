"""Validation of OpenAI-style request bodies and the OpenAI error shape.

Every problem with a request becomes an `APIError` carrying the HTTP status and
the body OpenAI's API would send (`{"error": {"message", "type", "param",
"code"}}`), so the official clients raise their usual exception types.  As
OpenAI does, unknown top-level fields are refused (a typo such as `max_token`
must not be silently ignored); OpenAI fields this server does not implement are
accepted only at their neutral value (`n=1`, `echo=false`, no `logprobs`, ...).
Extensions beyond OpenAI's fields: `top_k`, `repetition_penalty` and `ignore_eos`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from merino_edge.runtime.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY

MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**63 - 1
CHAT_ROLES = ("system", "developer", "user", "assistant")
# The deepest a valid request nests is 4 (body > messages > message > content parts > part); this leaves room.
MAX_JSON_DEPTH = 16
MAX_NUMBER_DIGITS = 64  # longer integers are refused before Python converts them


class APIError(Exception):
    """An HTTP error answer with an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        message = _printable(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = None if param is None else _printable(param)
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ApiRequest:
    """A validated `/v1/completions` or `/v1/chat/completions` request."""

    endpoint: str  # "completions" | "chat"
    model: str | None
    prompt: str | list[int] | None = None  # completions
    messages: list[dict] = field(default_factory=list)  # chat: [{"role", "content"}] with text content
    max_tokens: int | None = None  # None: the endpoint's default
    sampling: dict = field(default_factory=dict)  # SamplingParams keywords other than max_tokens
    stream: bool = False
    include_usage: bool = False


# Fields common to both endpoints: name -> checker(value, name) -> normalized value.
def _number(lo: float, hi: float, *, lo_open: bool = False):
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _bad(name, f"'{name}' must be a number, got {_kind(value)}")
        if value < lo or value > hi or (lo_open and value == lo):
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            raise _bad(name, f"'{name}' must be in {bound}, got {value}")
        return float(value)

    return check


def _integer(lo: int, hi: int):
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, f"'{name}' must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise _bad(name, f"'{name}' must be between {lo} and {hi}, got {value}")
        return value

    return check


def _boolean(value, name):
    if not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be a boolean, got {_kind(value)}")
    return value


def _string(value, name):
    if not isinstance(value, str):
        raise _bad(name, f"'{name}' must be a string, got {_kind(value)}")
    return value


def _stop(value, name):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad(name, f"'{name}' must be a string or a list of strings, got {_kind(value)}")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _bad(name, f"'{name}' may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
    if any(s == "" for s in stops):
        raise _bad(name, f"'{name}' sequences must not be empty")
    return tuple(stops)


def _neutral(*allowed):
    """An OpenAI field this server accepts only at its neutral value(s)."""

    def check(value, name):
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise _bad(name, f"'{name}' is not supported by this server (only {allowed[0]!r} is accepted)")
        return None

    return check


_SAMPLING = {
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0, lo_open=True),
    "top_k": _integer(0, 2**31 - 1),
    "repetition_penalty": _number(MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY),
    "seed": _integer(0, MAX_SEED),
    "stop": _stop,
    "ignore_eos": _boolean,
}
_COMMON = {
    "model": _string,
    "max_tokens": _integer(1, 2**31 - 1),
    "stream": _boolean,
    "stream_options": None,  # checked with `stream`
    "user": _string,
    "n": _neutral(1),
    "frequency_penalty": _neutral(0, 0.0),
    "presence_penalty": _neutral(0, 0.0),
    "logit_bias": _neutral({}),
}
_COMPLETIONS = {"prompt": None, "echo": _neutral(False), "best_of": _neutral(1), "logprobs": _neutral(0), "suffix": _neutral("")}
_CHAT = {
    "messages": None,
    "max_completion_tokens": _integer(1, 2**31 - 1),
    "logprobs": _neutral(False),
    "top_logprobs": _neutral(0),
    "tools": _neutral([]),
    "tool_choice": _neutral("none"),
    "response_format": _neutral({"type": "text"}),
}

# Every top-level field each endpoint reads (others are refused).
ACCEPTED_FIELDS = {"completions": sorted({*_COMMON, *_COMPLETIONS, *_SAMPLING}), "chat": sorted({*_COMMON, *_CHAT, *_SAMPLING})}



def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _bad(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param)


def _printable(text: str) -> str:
    """`text` with anything UTF-8 cannot carry (lone surrogates) written as escapes, so an error body always encodes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _bad(None, f"the request body holds an integer of {len(digits)} digits; at most {MAX_NUMBER_DIGITS} are accepted")
    return int(digits)


def _check_tree(data) -> None:
    """400 for nesting deeper than MAX_JSON_DEPTH or a string (key or value) that is not valid Unicode."""
    stack = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(where or None, f"the request body holds a string that is not valid Unicode (a lone surrogate escape) at {where or 'the top'}") from None
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _bad(None, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                stack.append((key, depth, f"{where}.<key>" if where else "<key>"))
            stack.append((item, depth + 1, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key))


def parse_json_body(body: bytes) -> dict:
    """The body as a JSON object; 400 for invalid UTF-8 or JSON, a non-object, deep nesting, huge integers, lone surrogates."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(None, f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise _bad(None, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _bad(None, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise _bad(None, f"the request body must be a JSON object, got {_kind(data)}")
    _check_tree(data)
    return data


def _check_fields(data: dict, allowed: dict) -> dict:
    unknown = sorted(set(data) - set(allowed) - set(_SAMPLING))
    if unknown:
        raise _bad(unknown[0], f"Unrecognized request argument supplied: {', '.join(unknown)}")
    out = {}
    for name, value in data.items():
        check = allowed.get(name) or _SAMPLING.get(name)
        if value is None or check is None:
            continue  # null means "default", as in OpenAI's API; fields without a checker are validated by the caller
        out[name] = check(value, name)
    return out


def _stream_flags(data: dict, fields: dict) -> tuple[bool, bool]:
    stream = fields.get("stream", False)
    options = data.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise _bad("stream_options", "'stream_options' must be an object with the only key 'include_usage'")
    return stream, _boolean(options.get("include_usage", False), "stream_options.include_usage")


def _prompt(value, vocab_size: int):
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        bad = [t for t in value if not 0 <= t < vocab_size]
        if bad:
            raise _bad("prompt", f"'prompt' token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
        return list(value)
    if isinstance(value, list) and len(value) > 1:
        raise _bad("prompt", "'prompt' must hold one prompt: this server answers one prompt per request")
    raise _bad("prompt", f"'prompt' must be a string or a list of token ids, got {_kind(value)}")


def _message(index: int, msg) -> dict:
    where = f"messages[{index}]"
    if not isinstance(msg, dict):
        raise _bad(where, f"'{where}' must be an object, got {_kind(msg)}")
    role = msg.get("role")
    if role not in CHAT_ROLES:
        raise _bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
    content = msg.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}.content", f"'{where}.content' parts must be {{'type': 'text', 'text': ...}}: this model reads text only")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise _bad(f"{where}.content", f"'{where}.content' must be a string or a list of text parts, got {_kind(content)}")
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_completion_request(data: dict, vocab_size: int) -> ApiRequest:
    """Validate a `/v1/completions` body (already a JSON object)."""
    fields = _check_fields(data, {**_COMMON, **_COMPLETIONS})
    if data.get("prompt") is None:
        raise _bad("prompt", "'prompt' is required")
    stream, include_usage = _stream_flags(data, fields)
    return ApiRequest(
        endpoint="completions",
        model=fields.get("model"),
        prompt=_prompt(data["prompt"], vocab_size),
        max_tokens=fields.get("max_tokens"),
        sampling={k: v for k, v in fields.items() if k in _SAMPLING},
        stream=stream,
        include_usage=include_usage,
    )


def parse_chat_request(data: dict) -> ApiRequest:
    """Validate a `/v1/chat/completions` body (already a JSON object)."""
    fields = _check_fields(data, {**_COMMON, **_CHAT})
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", f"'messages' must be a non-empty array, got {_kind(messages)}")
    if "max_tokens" in fields and "max_completion_tokens" in fields:
        raise _bad("max_tokens", "give 'max_tokens' or 'max_completion_tokens', not both")
    stream, include_usage = _stream_flags(data, fields)
    return ApiRequest(
        endpoint="chat",
        model=fields.get("model"),
        messages=[_message(i, m) for i, m in enumerate(messages)],
        max_tokens=fields.get("max_tokens", fields.get("max_completion_tokens")),
        sampling={k: v for k, v in fields.items() if k in _SAMPLING},
        stream=stream,
        include_usage=include_usage,
    )
