#!/usr/bin/env python3
"""A session's stream survives the death of the node serving it, with the official Python SDK.

Creates an agent (bash always allowed) whose model plays tests/sdk/failover.script.json (a
`sleep 3` bash call, then a message) and a session, prints `SESSION <id>` and reads the
number (1-based, in `--urls`) of the node to stream from: the victim. It opens the
session's stream there with `events.stream` and sends a message through another node (the
survivor). When the bash call starts it prints `KILL` and waits for a line `killed` on
stdin: the caller SIGKILLs the victim meanwhile. It reads what the dead connection still
yields, reconnects with the SDK to the survivor with
`extra_headers={"Last-Event-ID": str(last_seq)}` and reads to the `end_turn` idle.
Checks: every event is delivered exactly once (by seq), in order, none is missed (compared
with `events.list`), and the turn finishes; finally a stream opened on the third node with
`?after=0` replays the whole log.

    python failover.py --urls URL1,URL2,URL3 --api-key KEY --model scripted:failover.json
"""

import sys
import time

import anthropic

from common import CLOUD_LIMITED, check, check_eq, client, fail, httpx, main, require, seq_of, text_of, toolset

FINAL_TEXT = "after the sleep"
RECONNECT_DEADLINE = 30.0


class Delivery:
    """The events the client got, across connections; fails on a duplicate or a step back."""

    def __init__(self):
        self.events = []

    @property
    def last_seq(self):
        return seq_of(self.events[-1]) if self.events else 0

    def record(self, event, connection):
        seq = seq_of(event)
        check(
            seq > self.last_seq,
            f"{connection}: seq {seq} ({event.type}) delivered after seq {self.last_seq}: a duplicate or out of order",
        )
        self.events.append(event)
        return event


def ask(line):
    """Prints `line` for the caller and returns its one-line answer."""
    print(line, flush=True)
    answer = sys.stdin.readline()
    check(answer, f"the caller closed stdin instead of answering {line!r}")
    return answer.strip()


def run(args):
    require(args, "urls", "api-key", "model")
    urls = args.urls.split(",")
    check(len(urls) >= 3, f"--urls needs three nodes, got {urls}")
    sdk = client(urls[0], args.api_key)
    agent = sdk.beta.agents.create(name="sdk failover", model=args.model, tools=[toolset("always_allow")])
    environment = sdk.beta.environments.create(name="sdk failover", config=CLOUD_LIMITED)
    session = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    victim_index = int(ask(f"SESSION {session.id}")) - 1
    others = [url for index, url in enumerate(urls) if index != victim_index]
    victim = client(urls[victim_index], args.api_key, max_retries=0)
    survivor = client(others[0], args.api_key)
    delivery = Delivery()

    stream = victim.beta.sessions.events.stream(session.id)
    survivor.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "sleep on it"}]}]
    )
    read_until_tool_use(stream, delivery)
    check_eq(ask("KILL"), "killed", "the caller's answer to KILL")
    leftovers, ending = read_dead_connection(stream, delivery)
    before = delivery.last_seq

    resumed, attempts = reconnect(survivor, session.id, before)
    tool_result = read_to_end_turn(resumed, delivery)
    resumed.close()
    listed = check_complete(survivor, session.id, delivery)
    check_replay(client(others[1], args.api_key), session.id, listed)
    return (
        f"session {session.id}: {len(delivery.events)} events each delivered once; the victim's stream gave "
        f"{leftovers} more after the kill and then {ending}; resumed after seq {before} on attempt {attempts}; "
        f"the tool's result: {tool_result!r}; the turn ended with {FINAL_TEXT!r}; "
        "a replay from seq 0 on the third node matched"
    )


def read_until_tool_use(stream, delivery):
    for event in stream:
        delivery.record(event, "the victim's stream")
        if event.type == "agent.tool_use":
            check_eq(event.name, "bash", "the tool used")
            return
        if event.type == "session.status_idle":
            fail(f"the turn went idle before the bash call: {event!r}")
        if event.type == "session.error":
            fail(f"the session reported an error: {event!r}")
    fail("the victim's stream ended before the bash call")


def read_dead_connection(stream, delivery):
    """What the killed node's connection still yields (already buffered events), then how it ended."""
    count = 0
    try:
        for event in stream:
            delivery.record(event, "the victim's stream after the kill")
            count += 1
            check(event.type != "session.status_idle", f"the turn ended before the kill landed: {event!r}")
        ending = "ended cleanly"
    except (httpx.HTTPError, anthropic.APIError) as error:
        ending = f"failed with {type(error).__name__}"
    stream.close()
    return count, ending


def reconnect(sdk, session_id, last_seq):
    """The SDK's stream on a live node, resuming after `last_seq`; retried while the cluster fails over."""
    deadline = time.monotonic() + RECONNECT_DEADLINE
    attempts = 0
    while True:
        attempts += 1
        try:
            return sdk.beta.sessions.events.stream(session_id, extra_headers={"Last-Event-ID": str(last_seq)}), attempts
        except (anthropic.APIConnectionError, anthropic.InternalServerError) as error:
            if time.monotonic() > deadline:
                fail(f"cannot reconnect after {attempts} attempts: {type(error).__name__}: {error}")
            print(f"reconnect attempt {attempts}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            time.sleep(0.5)


def read_to_end_turn(stream, delivery):
    """Reads to the `end_turn` idle; returns the bash call's result (an error if its node died under it)."""
    messages, results = [], [e for e in delivery.events if e.type == "agent.tool_result"]
    for event in stream:
        delivery.record(event, "the resumed stream")
        if event.type == "agent.tool_result":
            results.append(event)
        elif event.type == "agent.message":
            messages.append(text_of(event.content))
        elif event.type == "session.status_idle":
            check_eq(event.stop_reason.type, "end_turn", "the stop reason")
            check(messages and messages[-1] == FINAL_TEXT, f"the last agent.message is not {FINAL_TEXT!r}: {messages}")
            check_eq(len(results), 1, "tool results")
            output = text_of(results[0].content)
            check(results[0].is_error or "slept" in output, f"a successful bash result lacks 'slept': {results[0]!r}")
            return ("error: " if results[0].is_error else "") + output.strip()
    fail("the resumed stream ended before the turn did")


def check_complete(sdk, session_id, delivery):
    """Every event in the log from the first delivered one on was delivered (and nothing else)."""
    listed = list(sdk.beta.sessions.events.list(session_id, limit=1000))
    first = seq_of(delivery.events[0])
    expected = [(seq_of(e), e.id, e.type) for e in listed if seq_of(e) >= first]
    delivered = [(seq_of(e), e.id, e.type) for e in delivery.events]
    if delivered != expected:
        missing = sorted(set(expected) - set(delivered))
        extra = sorted(set(delivered) - set(expected))
        fail(f"the streams' events differ from the log: missing {missing}, not in the log {extra}")
    return listed


def check_replay(sdk, session_id, listed):
    """`?after=0` on another node streams the whole log once, in order (read as far as the log goes)."""
    stream = sdk.beta.sessions.events.stream(session_id, extra_query={"after": 0})
    replayed = []
    for event in stream:
        replayed.append((seq_of(event), event.id))
        if len(replayed) == len(listed):
            break
    stream.close()
    check_eq(replayed, [(seq_of(e), e.id) for e in listed], "the events replayed with ?after=0")


def extra_args(args):
    args.add_argument("--urls", help="the base URLs of three nodes, comma-separated")


if __name__ == "__main__":
    main(run, __doc__, extra_args)
