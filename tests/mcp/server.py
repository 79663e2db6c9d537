"""An MCP server for agentd's tests, built with the official Python MCP SDK
(PyPI `mcp`, installed by scripts/setup.sh into /var/cache/agentd/mcp-python).

It serves the streamable HTTP transport on loopback at /mcp and requires
`Authorization: Bearer TOKEN` (401 otherwise). It binds the port itself
(0: any free one) and prints `listening PORT` once it accepts connections.
Every tool call is appended to --calls (one line: tool name and argument),
so a test can count how often a call really reached the server, and so is
the method of every JSON-RPC request that passed the token check
(`rpc tools/list`).

    python server.py --token T --calls /tmp/calls.txt [--port 0] [--json-response]
"""

import argparse
import asyncio
import json
import socket
import urllib.parse
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.responses import JSONResponse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--port", type=int, default=0)
    # An OAuth token endpoint at /token: a refresh with this refresh token
    # gets --token as the new access token (recorded as `token refreshed`).
    parser.add_argument("--refresh-token")
    # Answer each request with a JSON body instead of an event stream.
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()

    server = MCPServer("agentd-test")

    def record(line: str) -> None:
        with open(args.calls, "a", encoding="utf-8") as calls:
            calls.write(line + "\n")
            calls.flush()

    @server.tool(description="Adds two integers.")
    def add(a: int, b: int) -> str:
        record(f"add {a} {b}")
        return str(a + b)

    @server.tool(description="Says which token this server accepts (redaction must hide it).")
    def whoami() -> str:
        record("whoami")
        return f"this server accepts the token {args.token}"

    @server.tool(description="Records the call, then waits `seconds` before answering.")
    async def slow(label: str, seconds: float) -> str:
        record(f"slow {label}")
        await asyncio.sleep(seconds)
        return f"slow {label} done"

    app = server.streamable_http_app(json_response=args.json_response)
    expected = f"Bearer {args.token}"

    async def token_endpoint(scope, receive, send):
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        form = urllib.parse.parse_qs(body.decode())
        good = (
            args.refresh_token is not None
            and form.get("grant_type") == ["refresh_token"]
            and form.get("refresh_token") == [args.refresh_token]
        )
        if not good:
            await JSONResponse({"error": "invalid_grant"}, status_code=400)(scope, receive, send)
            return
        record("token refreshed")
        answer = {"access_token": args.token, "token_type": "Bearer", "expires_in": 3600}
        await JSONResponse(answer)(scope, receive, send)

    async def with_bearer(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope.get("path") == "/token":
            await token_endpoint(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        presented = headers.get(b"authorization", b"").decode()
        if presented != expected:
            # Echoes what it was given, as careless servers do: the runtime
            # must scrub it from what it records.
            response = JSONResponse({"error": "invalid_token", "presented": presented}, status_code=401)
            await response(scope, receive, send)
            return
        body = bytearray()

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        method = json.loads(body).get("method")
                    except (ValueError, AttributeError):
                        method = None
                    if method:
                        record(f"rpc {method}")
            return message

        await app(scope, recording_receive, send)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    port = listener.getsockname()[1]

    config = uvicorn.Config(with_bearer, log_level="warning", lifespan="on")
    uvicorn_server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uvicorn_server.serve(sockets=[listener]))
        while not uvicorn_server.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.01)
        print(f"listening {port}", flush=True)
        await task

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
