"""The HTTP ceiling of `make bench-serving`: a bare ASGI app that parses the JSON body and sends it back, served by
uvicorn exactly as a looplab worker is (httptools, uvloop, no access log). No framework, no model, no log: what a
uvicorn worker answers when the handler does nothing but read and write JSON.

    .venv/bin/python -m uvicorn echo:app --app-dir benchmarks/serving --http httptools --no-access-log --port 8765
"""

from __future__ import annotations

import orjson

HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    try:
        answer, status = orjson.dumps(orjson.loads(b"".join(chunks))), 200
    except orjson.JSONDecodeError:
        answer, status = b'{"detail": "the body is not JSON"}', 422
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": answer})
