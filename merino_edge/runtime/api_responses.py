"""OpenAI-shaped response bodies and server-sent-event chunks.

Streaming follows OpenAI's semantics exactly: every chunk is one
`data: {json}` event, the stream ends with `data: [DONE]`, and usage comes
only when the request asked for it (`stream_options: {"include_usage": true}`)
in one extra last chunk whose `choices` is empty (all earlier chunks then carry
`"usage": null`).  Beyond OpenAI, the final body (non-streaming) and the chunk
carrying `finish_reason` add `timings` (queue, time to first token, decode and
total seconds, decode tokens/s), as Ollama and llama.cpp do.
"""

from __future__ import annotations

import json
import time
import uuid

DONE = b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    """One server-sent event carrying `data` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def public_timings(timings: dict, completion_tokens: int) -> dict:
    """Timings for the client, with decode speed (tokens after the first, per second)."""
    out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in timings.items()}
    decode_s = timings.get("decode_s") or 0.0
    out["decode_tokens_per_s"] = round((completion_tokens - 1) / decode_s, 3) if completion_tokens > 1 and decode_s > 0 else None
    return out


class ResponseWriter:
    """Builds one request's bodies: `/v1/completions` ("completions") or `/v1/chat/completions` ("chat")."""

    def __init__(self, endpoint: str, model: str, include_usage: bool = False):
        self.chat = endpoint == "chat"
        self.model = model
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def body(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, timings: dict) -> dict:
        """The whole answer of a non-streaming request."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        data = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        data["usage"] = usage(prompt_tokens, completion_tokens)
        data["timings"] = public_timings(timings, completion_tokens)
        return data

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False, timings: dict | None = None) -> bytes:
        """One streamed delta; `role` marks a chat stream's opening chunk."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        data = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
        if self.include_usage:
            data["usage"] = None
        if timings is not None:
            data["timings"] = timings
        return sse(data)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The extra last chunk of a stream that asked for usage: no choices, the token counts."""
        data = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        data["usage"] = usage(prompt_tokens, completion_tokens)
        return sse(data)
