"""An ASGI middleware that refuses what the API never accepts, before BentoML parses it.

- bodies larger than `max_bytes` (by Content-Length, or counted while reading a chunked body): 413
- POST bodies BentoML would not parse as JSON (multipart, form-encoded, pickle): 415

and makes BentoML's 400 answers match the OpenAPI document it publishes (`_documented_400`),

so that no request reaches a parser it could crash (BentoML answers a multipart body sent to a
JSON API with a 500). Paths outside `api_paths` (health, metrics, docs) pass untouched.

It also recycles keep-alive connections: after `recycle_after` requests on one connection the
response carries `Connection: close`. BentoML's workers share one listening socket and a
connection stays with the worker that accepted it, so a client holding a few long-lived
connections (a gateway, a load generator) can pin them all on one worker while the other idles;
when connections are re-opened from time to time, the idle worker accepts them.
"""

from __future__ import annotations

import json

# Media types BentoML hands to a non-JSON parser; anything else is parsed as JSON.
NOT_JSON = frozenset({"multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"})


class RequestGuard:
    def __init__(self, app, max_bytes: int = 1_000_000, api_paths: tuple[str, ...] = (), recycle_after: int = 0):
        self.app = app
        self.max_bytes = max_bytes
        self.api_paths = frozenset(api_paths)
        self.recycle_after = recycle_after
        self.served: dict[tuple, int] = {}  # per client connection (host, port): requests so far

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in self.api_paths or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if self.recycle_after > 0 and scope.get("client"):
            send = self._recycling(tuple(scope["client"]), send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media_type in NOT_JSON:
            return await reply_json(send, 415, f"Content-Type must be application/json, got {media_type!r}")
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return await reply_json(send, 400, f"invalid Content-Length {length!r}")
            if size > self.max_bytes:
                return await reply_json(
                    send, 413, f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"
                )

        # Read the whole body here (it is small or refused), then replay it to the app.
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                return await reply_json(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, _documented_400(send))

    def _recycling(self, client: tuple, send):
        count = self.served.get(client, 0) + 1
        if count < self.recycle_after:
            if len(self.served) > 10_000:  # connections that went away without reaching the limit
                self.served.clear()
            self.served[client] = count
            return send
        self.served.pop(client, None)

        async def closing_send(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return closing_send


def _documented_400(send):
    """BentoML answers a validation error with `detail` as pydantic's list of errors, while the
    OpenAPI document it publishes says `detail` is a string: the answer is made to match, with
    the readable string ("k: Input should be less than or equal to 100; ...") in `detail` and
    the list under `errors`."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def sending(message):
        nonlocal start
        if message["type"] == "http.response.start" and message.get("status") == 400:
            start = message
            return
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("detail"), list):
            errors = data["detail"]
            data["detail"] = "; ".join(_readable(e) for e in errors)
            data["errors"] = errors
            body = json.dumps(data).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return sending


def _readable(error) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = ".".join(str(part) for part in error.get("loc", []) if part != "body")
    return f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", ""))


async def reply_json(send, status: int, message: str, headers: list | None = None) -> None:
    """Answer `{"error": message}` with `status` (and extra raw headers) from an ASGI middleware."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
