#!/usr/bin/env python3
"""Bad requests get the right 4xx and the error envelope, and the node keeps serving.

Raw requests (with httpx2, the HTTP client the official SDK uses) carry malformed JSON,
wrong types, unknown fields, an oversized body (> 2 MiB: 413), 10,000 events in one send,
bad list parameters, a stale agent version (409 with `x-should-retry: false`), a stream of
a deleted session (404) and more; each answer must be the expected status with
`{"type":"error","error":{"type","message"},"request_id"}` and a `request-id` header equal
to the body's `request_id`. After each one the node still answers a normal request, and at
the end the SDK still runs a session on it.

    python bad_input.py --base-url URL --api-key KEY --model scripted:bad_input.json
"""

import json

import anthropic

from common import CLOUD_LIMITED, check, check_envelope, check_eq, client, expect_status_error, httpx, main, require

BODY_MAX = 2 * 1024 * 1024
MESSAGE = {"type": "user.message", "content": [{"type": "text", "text": "x"}]}


class Raw:
    """Raw HTTP calls to one node, with the key and the headers the SDK sends."""

    def __init__(self, base_url, api_key):
        self.base_url = base_url
        self.http = httpx.Client(
            base_url=base_url,
            timeout=60.0,
            headers={
                "authorization": f"Bearer {api_key}",
                "anthropic-version": "2026-10-21",
                "anthropic-beta": "managed-agents-2026-04-01",
                "accept": "application/json",
            },
        )
        self.cases = 0

    def call(self, method, path, *, raw=None, body=None, params=None):
        content = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"content-type": "application/json"} if method != "GET" else {}
        return self.http.request(method, path, content=content, params=params, headers=headers)

    def expect(self, what, status, error_type, method, path, **request):
        """One bad request: `status` with the envelope; then the node still serves a good one."""
        self.cases += 1
        try:
            response = self.call(method, path, **request)
        except httpx.HTTPError as error:
            check(False, f"{what}: {method} {path} failed at the HTTP level: {type(error).__name__}: {error}")
        statuses = status if isinstance(status, tuple) else (status,)
        check(
            response.status_code in statuses,
            f"{what}: {method} {path}: expected {status}, got {response.status_code}: {response.text[:1000]}",
        )
        check_envelope(response.status_code, parsed(response), response.headers, response.status_code, error_type, what)
        self.still_serves(what)
        return response

    def still_serves(self, after):
        response = self.call("GET", "/v1/agents", params={"limit": 1})
        check_eq(response.status_code, 200, f"GET /v1/agents after {after} ({response.text[:500]})")


def parsed(response):
    try:
        return response.json()
    except ValueError:
        return response.text


def bad_bodies(raw, model):
    """Bodies that are not JSON, not objects, or not what the endpoint takes."""
    invalid = "invalid_request_error"
    raw.expect("malformed JSON", 400, invalid, "POST", "/v1/agents", raw='{"name": "x", "model": ')
    raw.expect("invalid UTF-8", 400, invalid, "POST", "/v1/agents", raw=b'{"name": "\xff\xfe", "model": "m"}')
    raw.expect("a JSON array", 400, invalid, "POST", "/v1/agents", raw="[1, 2]")
    raw.expect("an empty body", 400, invalid, "POST", "/v1/agents", raw="")
    deep = '{"name": "x", "model": "m", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    raw.expect("JSON nested 100,000 deep", 400, invalid, "POST", "/v1/agents", raw=deep)
    raw.expect("a number for name", 400, invalid, "POST", "/v1/agents", body={"name": 5, "model": model})
    raw.expect("no model", 400, invalid, "POST", "/v1/agents", body={"name": "x"})
    raw.expect(
        "an unknown field", 400, invalid, "POST", "/v1/agents", body={"name": "x", "model": model, "colour": 1}
    )
    raw.expect(
        "tools not a list", 400, invalid, "POST", "/v1/agents", body={"name": "x", "model": model, "tools": "bash"}
    )
    raw.expect(
        "an unknown tool type",
        400,
        invalid,
        "POST",
        "/v1/agents",
        body={"name": "x", "model": model, "tools": [{"type": "teleporter_20990101"}]},
    )
    limited_hosts_not_list = {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": "example.com"}}
    raw.expect(
        "allowed_hosts not a list",
        400,
        invalid,
        "POST",
        "/v1/environments",
        body={"name": "e", "config": limited_hosts_not_list},
    )
    with_packages = dict(CLOUD_LIMITED, packages={"pip": ["requests"]})
    raw.expect("packages", 400, invalid, "POST", "/v1/environments", body={"name": "e", "config": with_packages})
    raw.expect("a number for agent", 400, invalid, "POST", "/v1/sessions", body={"agent": 5, "environment_id": "x"})
    big = {"name": "x", "model": model, "description": "x" * (BODY_MAX + 1024)}
    raw.expect("a body over 2 MiB", 413, None, "POST", "/v1/agents", body=big)


# protocol::limits::TEXT_BYTES_MAX: the longest text of one message.
TEXT_BYTES_MAX = 256 * 1024


def text_message(size):
    return {"type": "user.message", "content": [{"type": "text", "text": "x" * size}]}


def bad_events(raw, session_id):
    """Sends and lists of events that the endpoint refuses."""
    invalid = "invalid_request_error"
    path = f"/v1/sessions/{session_id}/events"
    raw.expect("10,000 events in one send", 400, invalid, "POST", path, body={"events": [MESSAGE] * 10_000})
    # Limits at their edge (protocol::limits): at the limit accepted, one past refused.
    raw.expect("51 events in one send", 400, invalid, "POST", path, body={"events": [MESSAGE] * 51})
    past = {"events": [text_message(TEXT_BYTES_MAX + 1)]}
    raw.expect(f"a message of {TEXT_BYTES_MAX + 1} bytes", 400, invalid, "POST", path, body=past)
    raw.expect("events not a list", 400, invalid, "POST", path, body={"events": "hello"})
    raw.expect("no events field", 400, invalid, "POST", path, body={})
    raw.expect("an unknown event type", 400, invalid, "POST", path, body={"events": [{"type": "user.teleport"}]})
    raw.expect(
        "a user.message without content", 400, invalid, "POST", path, body={"events": [{"type": "user.message"}]}
    )
    raw.expect(
        "an unknown field on an event", 400, invalid, "POST", path, body={"events": [dict(MESSAGE, colour=1)]}
    )
    raw.expect("limit=5000", 400, invalid, "GET", path, params={"limit": 5000})
    raw.expect("limit=abc", 400, invalid, "GET", path, params={"limit": "abc"})
    raw.expect("order=sideways", 400, invalid, "GET", path, params={"order": "sideways"})
    raw.expect("page=garbage", 400, invalid, "GET", path, params={"page": "%%not-a-cursor%%"})
    raw.expect(
        "event_deltas[]=session.status_idle",
        400,
        invalid,
        "GET",
        f"{path}/stream",
        params={"event_deltas[]": "session.status_idle"},
    )


def bad_targets(raw):
    """Paths and methods that name nothing."""
    raw.expect("an unknown route", 404, "not_found_error", "GET", "/v1/teleporters")
    raw.expect("an unknown agent", 404, "not_found_error", "GET", "/v1/agents/agent_00000000000000000000000000000001")
    raw.expect("a malformed session id", (400, 404), None, "GET", "/v1/sessions/not-an-id")
    raw.expect("DELETE of an agent (agents have none)", (404, 405), None, "DELETE", "/v1/agents/agent_x")


def stale_version(raw, agent_id):
    """A deterministic conflict is a 409 that tells the SDK not to retry it."""
    path = f"/v1/agents/{agent_id}"
    response = raw.expect("an update at a stale version", 409, None, "POST", path, body={"version": 99, "name": "y"})
    check_eq(response.headers.get("x-should-retry"), "false", "the x-should-retry header of a 409")


def deleted_session(sdk, raw, agent_id, environment_id):
    """A deleted session's stream, events and retrieval answer 404."""
    session = sdk.beta.sessions.create(agent=agent_id, environment_id=environment_id)
    check_eq(sdk.beta.sessions.delete(session.id).type, "session_deleted", "the delete answer")
    not_found = "not_found_error"
    raw.expect("the stream of a deleted session", 404, not_found, "GET", f"/v1/sessions/{session.id}/events/stream")
    raw.expect("events of a deleted session", 404, not_found, "GET", f"/v1/sessions/{session.id}/events")
    raw.expect(
        "a send to a deleted session",
        404,
        not_found,
        "POST",
        f"/v1/sessions/{session.id}/events",
        body={"events": [MESSAGE]},
    )
    expect_status_error(
        anthropic.NotFoundError,
        404,
        not_found,
        lambda: sdk.beta.sessions.events.stream(session.id),
        "the SDK's stream of a deleted session",
    )


def still_works(sdk, agent_id, environment_id):
    """After all that, a normal session runs a turn through the SDK."""
    session = sdk.beta.sessions.create(agent=agent_id, environment_id=environment_id)
    with sdk.beta.sessions.events.stream(session.id) as stream:
        sdk.beta.sessions.events.send(session.id, events=[MESSAGE])
        for event in stream:
            if event.type == "session.status_idle":
                check_eq(event.stop_reason.type, "end_turn", "the stop reason")
                break
    kinds = [event.type for event in sdk.beta.sessions.events.list(session.id)]
    check("agent.message" in kinds, f"the turn after the bad input has no agent.message: {kinds}")


def run(args):
    require(args, "base-url", "api-key", "model")
    sdk = client(args.base_url, args.api_key, max_retries=0)
    raw = Raw(args.base_url, args.api_key)
    agent = sdk.beta.agents.create(name="bad input", model=args.model)
    environment = sdk.beta.environments.create(name="bad input", config=CLOUD_LIMITED)
    session = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    bad_bodies(raw, args.model)
    bad_events(raw, session.id)
    bad_targets(raw)
    stale_version(raw, agent.id)
    deleted_session(sdk, raw, agent.id, environment.id)
    expect_status_error(
        anthropic.BadRequestError,
        400,
        "invalid_request_error",
        lambda: sdk.beta.agents.create(name="x", model=args.model, extra_body={"colour": 1}),
        "the SDK's agents.create with an unknown field",
    )
    listed = list(sdk.beta.sessions.events.list(session.id))
    check_eq(listed, [], "the events of the session that every bad send went to")
    # The other side of the edge, on a session of its own.
    other = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    accepted = raw.call("POST", f"/v1/sessions/{other.id}/events", body={"events": [text_message(TEXT_BYTES_MAX)]})
    check_eq(accepted.status_code, 200, f"a message of {TEXT_BYTES_MAX} bytes ({accepted.text[:300]})")
    still_works(sdk, agent.id, environment.id)
    return f"{raw.cases} bad requests answered with the right 4xx and envelope; the node still serves"


if __name__ == "__main__":
    main(run, __doc__)
