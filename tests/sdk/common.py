"""Helpers shared by the Python SDK scripts of tests/sdk (run by tests/tests/sdk_*.rs).

Every script takes its settings from argv (``--base-url``, ``--api-key``, ``--model``)
or, failing that, from the environment (``AGENTD_BASE_URL``, ``AGENTD_API_KEY``,
``AGENTD_MODEL``). A failed check prints ``<script>: FAIL: <why>`` on stderr and exits 1.
"""

import argparse
import json
import os
import signal
import sys

import anthropic

try:  # anthropic 2.x talks HTTP through httpx2 (a renamed httpx); older ones through httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

NAME = os.path.basename(sys.argv[0])

# The SDK reads these when an option is None; the scripts pass every setting explicitly.
for _variable in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_variable, None)


class Failure(Exception):
    """A check that did not hold."""


def fail(message):
    raise Failure(message)


def check(condition, message):
    if not condition:
        fail(message)


def check_eq(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {expected!r}, got {actual!r}")


def parser(description):
    """An argument parser with the settings every script takes."""
    args = argparse.ArgumentParser(description=description)
    args.add_argument("--base-url", default=os.environ.get("AGENTD_BASE_URL"))
    args.add_argument("--api-key", default=os.environ.get("AGENTD_API_KEY"))
    args.add_argument("--model", default=os.environ.get("AGENTD_MODEL"))
    args.add_argument("--timeout", type=float, default=float(os.environ.get("AGENTD_SDK_TIMEOUT", "120")))
    return args


def require(args, *names):
    for name in names:
        if not getattr(args, name.replace("-", "_")):
            fail(f"--{name} is required")


def client(base_url, api_key, **options):
    """The official SDK client for one node."""
    options.setdefault("timeout", 60.0)
    options.setdefault("max_retries", 2)
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, **options)


def main(run, description, extra_args=None):
    """Parses the arguments, arms a deadline and runs ``run(args)``; exits 1 on any failure."""
    args = parser(description)
    if extra_args:
        extra_args(args)
    args = args.parse_args()

    def timed_out(_signum, _frame):
        raise Failure(f"timed out after {args.timeout:.0f} s")

    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(int(args.timeout))
    try:
        summary = run(args)
    except Failure as failure:
        print(f"{NAME}: FAIL: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    except anthropic.APIStatusError as error:
        request = error.response.request
        print(
            f"{NAME}: FAIL: unexpected {error.status_code} from {request.method} {request.url}: "
            f"{describe(error.body)} (request-id {error.request_id})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    except anthropic.APIError as error:
        print(f"{NAME}: FAIL: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    signal.alarm(0)
    print(f"{NAME}: ok: {summary}", flush=True)


def describe(value):
    try:
        return json.dumps(value)[:2000]
    except (TypeError, ValueError):
        return repr(value)[:2000]


def seq_of(event):
    """The sequence number agentd adds to every event (an extra field the SDK keeps)."""
    seq = getattr(event, "seq", None)
    if seq is None and getattr(event, "model_extra", None):
        seq = event.model_extra.get("seq")
    check(isinstance(seq, int), f"event {event.type} {getattr(event, 'id', None)} has no integer seq: {event!r}")
    return seq


def text_of(content):
    return "".join(getattr(block, "text", "") or "" for block in (content or []))


def toolset(bash_policy):
    return {
        "type": "agent_toolset_20260401",
        "configs": [{"name": "bash", "permission_policy": {"type": bash_policy}}],
    }


CUSTOM_LOOKUP = {
    "type": "custom",
    "name": "lookup",
    "description": "Looks a key up; answered by the client.",
    "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}},
}

CLOUD_LIMITED = {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": []}}


def expect_status_error(exception_class, status, error_type, call, what):
    """Runs ``call`` and checks it raises ``exception_class`` with ``status`` and the error envelope."""
    try:
        result = call()
    except anthropic.APIStatusError as error:
        check(
            isinstance(error, exception_class),
            f"{what}: expected {exception_class.__name__} ({status}), got {type(error).__name__} "
            f"{error.status_code}: {describe(error.body)}",
        )
        check_envelope(error.status_code, error.body, error.response.headers, status, error_type, what)
        return error
    close = getattr(result, "close", None)
    if callable(close):
        close()
    fail(f"{what}: expected {exception_class.__name__} ({status}), but the call succeeded: {result!r}"[:2000])


def check_envelope(status, body, headers, expected_status, error_type, what):
    """The error envelope: {"type":"error","error":{"type","message"},"request_id"} + a request-id header."""
    check(status == expected_status, f"{what}: expected status {expected_status}, got {status}: {describe(body)}")
    check(isinstance(body, dict), f"{what}: the error body is not a JSON object: {describe(body)}")
    check_eq(body.get("type"), "error", f"{what}: body.type")
    error = body.get("error")
    check(isinstance(error, dict), f"{what}: body.error is not an object: {describe(body)}")
    if error_type is not None:
        check_eq(error.get("type"), error_type, f"{what}: error.type")
    else:
        check(isinstance(error.get("type"), str) and error["type"], f"{what}: error.type missing: {describe(body)}")
    check(
        isinstance(error.get("message"), str) and error["message"],
        f"{what}: error.message missing: {describe(body)}",
    )
    header = headers.get("request-id")
    check(bool(header), f"{what}: no request-id header")
    check_eq(body.get("request_id"), header, f"{what}: body.request_id vs the request-id header")
