"""A small client of the server's Unix socket: `merino-edge complete` and `merino-edge chat`.

It speaks the same OpenAI-style HTTP API as any other client (httpx over the
socket, SSE streaming), so it needs nothing that the board does not already have.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx

from merino_edge.errors import InputError, MerinoError
from merino_edge.runtime.socket_path import default_socket_path

HELP = "/reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


class ApiClient:
    """The server's API over its Unix socket."""

    def __init__(self, socket_path: str | Path | None = None, timeout: float = 30.0):
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        try:
            present = self.socket_path.exists()
        except PermissionError as exc:
            raise MerinoError(self._connect_problem(exc)) from None
        if not present:
            raise InputError(f"no server socket at {self.socket_path}: is `merino-edge serve` running? (or pass --socket PATH)")
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        # No read timeout: a long answer may take its time between tokens on a busy board.
        self._http = httpx.Client(transport=transport, base_url="http://localhost", timeout=httpx.Timeout(timeout, read=None))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise MerinoError(self._connect_problem(exc)) from None

    def _connect_problem(self, exc: Exception) -> str:
        hint = " (the socket is for the merino-edge group: add yourself to it)" if "Permission denied" in str(exc) else ""
        return f"cannot talk to the server at {self.socket_path}: {exc}{hint}"

    def ready(self) -> bool:
        """True once the server has loaded its model (`/health` answers 200)."""
        return self._request("GET", "/health").status_code == 200

    def model(self) -> str:
        """The id of the model the server serves."""
        response = self._request("GET", "/v1/models")
        _raise_for_error(response)
        return response.json()["data"][0]["id"]

    def _stream(self, path: str, body: dict) -> Iterator[str]:
        """Text deltas of a streamed completion; closing the iterator hangs up, which stops the generation."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for_error(response)
                for data in sse_data(response.iter_text()):
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise MerinoError(f"server sent an event that is not JSON: {data[:80]!r}") from None
                    if "error" in event:
                        raise MerinoError(f"server: {event['error']['message']}")
                    for choice in event["choices"]:
                        text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                        if text:
                            yield text
        except httpx.TransportError as exc:
            raise MerinoError(self._connect_problem(exc)) from None

    def complete(self, prompt: str, **sampling) -> Iterator[str]:
        """Stream the continuation of `prompt` (sampling: max_tokens, temperature, top_p, seed, ...; None = default)."""
        return self._stream("/v1/completions", {"prompt": prompt, **_given(sampling)})

    def chat(self, messages: list[dict], **sampling) -> Iterator[str]:
        """Stream the assistant's answer to `messages`."""
        return self._stream("/v1/chat/completions", {"messages": messages, **_given(sampling)})


def sse_data(chunks: Iterable[str]) -> Iterator[str]:
    """The `data:` field of each server-sent event line in a stream of text chunks.

    Lines end at "\\n" only (a trailing "\\r" is dropped): `str.splitlines`, and so
    httpx's `iter_lines`, would also cut at U+2028 and other characters that JSON
    carries unescaped inside a string.
    """
    pending = ""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            if line.startswith("data:"):
                yield line[len("data:") :].removeprefix(" ").removesuffix("\r")


def _given(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise MerinoError(f"server answered {response.status_code}: {message}")


def run_chat(
    client: ApiClient,
    *,
    system: str | None = None,
    read: Callable[[str], str] = input,
    out=None,
    **sampling,
) -> list[dict]:
    """Interactive chat: keeps the conversation, `/reset` clears it, Ctrl-C stops one answer.

    `read` prompts for a line (EOFError ends the chat); `out` receives the text.
    Returns the conversation as it stood at the end.
    """
    out = out or sys.stdout
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    out.write(f"chatting with {client.model()} ({HELP})\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return messages
        except KeyboardInterrupt:  # at the prompt: drop the line, stay
            out.write("\n")
            continue
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return messages
        if line == "/reset":
            messages = list(opening)
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command {line.split()[0]} ({HELP})\n")
            continue
        messages.append({"role": "user", "content": line})
        answer = []
        out.write("model> ")
        stream = client.chat(messages, **sampling)
        try:
            for text in stream:
                answer.append(text)
                out.write(text)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except MerinoError as exc:
            out.write(f"\nerror: {exc}\n")
            messages.pop()  # the question was not answered; /reset if the conversation outgrew the context
            continue
        finally:
            stream.close()
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})
