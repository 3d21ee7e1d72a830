"""One streaming request to an OpenAI-compatible endpoint, timed token by token (httpx).

TTFT is the time from sending the request to the first chunk that carries generated output; every later
output chunk closes one inter-token gap. Token counts come from the server's own `usage` (requested with
`stream_options.include_usage`), so no tokenizer is needed here.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import urllib.parse
from typing import Any, Final, Literal

import httpx

Api = Literal["completions", "chat"]
PATHS: Final[dict[str, str]] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# Longest error body quoted back to the user.
ERROR_BODY_CHARS: Final = 200
# Words prompts are made of: short, common, each one or two tokens in BPE vocabularies. Random order so no
# two prompts share a prefix (an engine's prefix cache would otherwise skip their prefill).
WORDS: Final = tuple(
    [
        "time",
        "person",
        "year",
        "way",
        "day",
        "thing",
        "man",
        "world",
        "life",
        "hand",
        "part",
        "child",
        "eye",
        "woman",
        "place",
        "work",
        "week",
        "case",
        "point",
        "number",
        "group",
        "problem",
        "fact",
        "water",
        "room",
        "mother",
        "area",
        "money",
        "story",
        "month",
        "lot",
        "right",
        "study",
        "book",
        "word",
        "business",
        "issue",
        "side",
        "kind",
        "head",
        "house",
        "service",
        "friend",
        "father",
        "power",
        "hour",
        "game",
        "line",
        "end",
        "member",
        "law",
        "car",
        "city",
        "name",
        "team",
        "minute",
        "idea",
        "body",
        "back",
        "parent",
        "face",
        "level",
        "office",
        "door",
        "health",
        "art",
        "war",
        "history",
        "party",
        "result",
        "change",
        "morning",
        "reason",
        "research",
        "girl",
        "guy",
        "moment",
        "air",
        "teacher",
        "force",
        "education",
    ]
)


class EndpointError(ValueError):
    """The endpoint cannot be profiled at all (bad URL, unreachable, not OpenAI-compatible)."""


@dataclasses.dataclass
class RequestResult:
    """Timings of one request, seconds on the run's monotonic clock; `error` set when it failed."""

    start_s: float
    end_s: float = 0.0
    ttft_s: float | None = None
    # Gaps between successive text chunks (one token each when the server streams token by token).
    itls_s: list[float] = dataclasses.field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the request completed and produced at least one token."""
        return self.error is None and self.ttft_s is not None


def check_url(url: str) -> str:
    """The endpoint's base URL (scheme://host:port[/prefix]) or a one-line error naming the problem."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https"):
        raise EndpointError(f"--url {url!r}: must start with http:// or https://")
    if not parsed.hostname:
        raise EndpointError(f"--url {url!r}: no host")
    try:
        _ = parsed.port
    except ValueError:
        raise EndpointError(f"--url {url!r}: the port is not a number in 0-65535") from None
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def prompt_text(rng: random.Random, words: int) -> str:
    """A prompt of `words` random words."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


def request_body(
    api: Api, model: str, prompt: str, output_tokens: int, *, ignore_eos: bool
) -> dict[str, Any]:
    """The JSON body of one streaming request asking for exactly `output_tokens` tokens."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if ignore_eos:
        # vLLM and SGLang extensions: generate exactly max_tokens (random weights stop at random).
        body["ignore_eos"] = True
        body["min_tokens"] = output_tokens
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def describe(error: BaseException, timeout_s: float) -> str:
    """A one-line description of a transport failure."""
    if isinstance(error, httpx.TimeoutException):
        return f"timed out after {timeout_s:g} s ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({_first_line(error) or 'connection refused'})"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
        return f"connection closed mid-response ({_first_line(error) or type(error).__name__})"
    if isinstance(error, httpx.HTTPError):
        return f"{type(error).__name__}: {_first_line(error)}"
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:ERROR_BODY_CHARS] if text else ""


async def stream_request(
    client: httpx.AsyncClient,
    base_url: str,
    api: Api,
    body: dict[str, Any],
    clock_zero: float,
    timeout_s: float,
) -> RequestResult:
    """Send one streaming request and time it; failures are recorded in the result, never raised."""
    start = time.perf_counter()
    result = RequestResult(start_s=start - clock_zero)
    last = start
    try:
        async with client.stream("POST", base_url + PATHS[api], json=body, timeout=timeout_s) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode("utf-8", errors="replace")
                result.error = f"HTTP {response.status_code}: {' '.join(text.split())[:ERROR_BODY_CHARS]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    result.error = f"malformed stream chunk (not JSON): {data[:80]!r}"
                    return result
                if not isinstance(chunk, dict):
                    result.error = f"malformed stream chunk (not an object): {data[:80]!r}"
                    return result
                if "error" in chunk:
                    result.error = f"server error in stream: {str(chunk['error'])[:ERROR_BODY_CHARS]}"
                    return result
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    result.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
                    result.output_tokens = _int_or_none(usage.get("completion_tokens")) or 0
                if _has_text(chunk, api):
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    else:
                        result.itls_s.append(now - last)
                    last = now
    except (httpx.HTTPError, OSError) as error:
        result.error = describe(error, timeout_s)
        return result
    finally:
        result.end_s = time.perf_counter() - clock_zero
    if result.ttft_s is None:
        result.error = "the stream ended without generating any output"
    elif result.output_tokens == 0:
        # No usage reported: count text chunks (one token each for vLLM, SGLang, TGI).
        result.output_tokens = len(result.itls_s) + 1
    return result


def _has_text(chunk: dict[str, Any], api: Api) -> bool:
    """True for a chunk that carries generated output.

    Engines stream one chunk per decoding step, even when the token's text is still empty (a partial UTF-8
    sequence, a special token: a random-weight model produces many); the step is what TTFT and ITL time.
    Chat streams open with a role-only delta sent before any token: not an output.
    """
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    if api == "chat":
        delta = choices[0].get("delta")
        if not isinstance(delta, dict):
            return False
        return not ("role" in delta and not delta.get("content") and choices[0].get("finish_reason") is None)
    return "text" in choices[0]


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def discover(client: httpx.AsyncClient, base_url: str, timeout_s: float) -> tuple[str, str | None]:
    """The served model's id (GET /v1/models) and the engine's version (GET /version, vLLM) if any."""
    try:
        response = await client.get(base_url + "/v1/models", timeout=timeout_s)
    except (httpx.HTTPError, OSError) as error:
        raise EndpointError(f"{base_url}/v1/models: {describe(error, timeout_s)}") from None
    if response.status_code >= 400:
        raise EndpointError(
            f"{base_url}/v1/models: HTTP {response.status_code}, not an OpenAI-compatible server"
        )
    try:
        data = response.json()["data"]
        model = str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(
            f"{base_url}/v1/models: not an OpenAI model list (expected {{'data': [{{'id': ...}}]}})"
        ) from None
    version: str | None = None
    try:
        answer = await client.get(base_url + "/version", timeout=timeout_s)
        if answer.status_code == 200:
            found = answer.json().get("version")
            version = str(found) if found else None
    except (httpx.HTTPError, OSError, ValueError, AttributeError):
        version = None
    return model, version
