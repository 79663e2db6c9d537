#!/usr/bin/env python3
"""The basic Managed Agents flow, driven with the official Python SDK (anthropic 2.10.0).

Creates an agent (bash `always_ask` + the custom tool `lookup`), an environment and a
session; opens the session's stream with the SDK's own `events.stream` before sending;
sends a message; allows the bash call, answers the custom tool; waits for the final
`agent.message` and the `end_turn` idle; lists the events a few at a time (several pages)
and checks they are the streamed ones, once each, in seq order; then retrieves, archives
and deletes the session, and checks its stream ends with `session.deleted`.

The agent's model (`--model`, e.g. `scripted:flow.json`) must play tests/sdk/flow.script.json.

    python flow.py --base-url http://127.0.0.1:8080 --api-key KEY --model scripted:flow.json
"""

import anthropic

from common import CLOUD_LIMITED, CUSTOM_LOOKUP, check, check_eq, client, fail, main, require, seq_of, text_of
from common import toolset

BASH_OUTPUT = "hello-from-bash"
FINAL_TEXT = "All done: 42"
PAGE_LIMIT = 3


def run(args):
    require(args, "base-url", "api-key", "model")
    sdk = client(args.base_url, args.api_key)
    agent, environment = create_agent_and_environment(sdk, args.model)
    session = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="sdk flow")
    check_eq(session.type, "session", "session.type")
    check(session.id.startswith("sesn_"), f"session id {session.id!r} lacks the sesn_ prefix")
    check_eq(session.status, "idle", "a new session's status")
    check_eq(session.agent.id, agent.id, "session.agent.id")
    check_eq(session.environment_id, environment.id, "session.environment_id")

    stream = sdk.beta.sessions.events.stream(session.id)
    sent = sdk.beta.sessions.events.send(
        session.id,
        events=[{"type": "user.message", "content": [{"type": "text", "text": "Check, then look the answer up."}]}],
    )
    check(sent.data and len(sent.data) == 1, f"events.send echoed {sent.data!r}")
    check_eq(sent.data[0].type, "user.message", "the echoed event's type")
    streamed = play_turn(sdk, session.id, stream)
    listed, pages = list_events(sdk, session.id)
    compare(streamed, listed)
    check_shapes(listed)
    stored = next((event for event in listed if event.id == sent.data[0].id), None)
    check(stored is not None, f"the echoed event {sent.data[0].id} is not in the log")
    check_eq(sent.data[0].processed_at, stored.processed_at, "the echo's processed_at (the stored event's)")
    check_filters(sdk, session.id, listed)
    check_live_only(sdk, session.id, listed)

    retrieved = sdk.beta.sessions.retrieve(session.id)
    check_eq((retrieved.id, retrieved.status), (session.id, "idle"), "the retrieved session's id and status")
    archived = sdk.beta.sessions.archive(session.id)
    check(archived.archived_at is not None, f"an archived session has no archived_at: {archived!r}")
    deleted = sdk.beta.sessions.delete(session.id)
    check_eq((deleted.id, deleted.type), (session.id, "session_deleted"), "the delete answer")
    tail = drain(stream)
    check(tail and tail[-1].type == "session.deleted", f"the stream did not end with session.deleted: {tail!r}")
    try:
        sdk.beta.sessions.retrieve(session.id)
        fail("a deleted session can still be retrieved")
    except anthropic.NotFoundError:
        pass
    clean_up(sdk, agent, environment)
    return (
        f"session {session.id}: {len(listed)} events in {pages} pages, each streamed once in seq order; "
        f"final message {FINAL_TEXT!r}; archived and deleted"
    )


def create_agent_and_environment(sdk, model):
    agent = sdk.beta.agents.create(
        name="sdk flow",
        model=model,
        system="You are a test.",
        tools=[toolset("always_ask"), CUSTOM_LOOKUP],
    )
    check_eq(agent.type, "agent", "agent.type")
    check(agent.id.startswith("agent_"), f"agent id {agent.id!r} lacks the agent_ prefix")
    check_eq(agent.version, 1, "a new agent's version")
    check_eq(agent.model.id, model, "agent.model.id")
    kinds = [tool.type for tool in agent.tools]
    check_eq(kinds, ["agent_toolset_20260401", "custom"], "the agent's tool types")
    bash = [config for config in agent.tools[0].configs if config.name == "bash"]
    check(bash and bash[0].permission_policy.type == "always_ask", f"bash is not always_ask: {agent.tools[0]!r}")
    check_eq(agent.tools[1].name, "lookup", "the custom tool's name")
    check_eq(sdk.beta.agents.retrieve(agent.id).id, agent.id, "the retrieved agent's id")

    environment = sdk.beta.environments.create(name="sdk flow environment", config=CLOUD_LIMITED)
    check_eq(environment.type, "environment", "environment.type")
    check(environment.id.startswith("env_"), f"environment id {environment.id!r} lacks the env_ prefix")
    check_eq(environment.config.type, "cloud", "environment.config.type")
    check_eq(environment.config.networking.type, "limited", "environment.config.networking.type")
    return agent, environment


def play_turn(sdk, session_id, stream):
    """Reads the stream until the turn's `end_turn` idle, answering what it asks for."""
    events, tool_uses, custom_uses, answered, messages = [], {}, {}, set(), []
    while True:
        event = next_event(stream, "the turn to end")
        events.append(event)
        seq_of(event)
        if event.type == "session.error":
            fail(f"the session reported an error: {event!r}")
        elif event.type == "agent.tool_use":
            check_eq(event.name, "bash", "the tool used")
            check_eq(event.evaluated_permission, "ask", "agent.tool_use.evaluated_permission")
            tool_uses[event.id] = event
        elif event.type == "agent.custom_tool_use":
            check_eq((event.name, event.input), ("lookup", {"key": "answer"}), "the custom tool call")
            custom_uses[event.id] = event
        elif event.type == "agent.tool_result":
            check(event.tool_use_id in tool_uses, f"a tool result for an unknown call: {event!r}")
            check(BASH_OUTPUT in text_of(event.content), f"the bash result lacks {BASH_OUTPUT!r}: {event!r}")
        elif event.type == "agent.message":
            messages.append(text_of(event.content))
        elif event.type == "session.status_idle":
            reason = event.stop_reason
            if reason.type == "end_turn":
                break
            check_eq(reason.type, "requires_action", "the stop reason of a turn that is not over")
            for event_id in reason.event_ids:
                if event_id not in answered:
                    answer(sdk, session_id, event_id, tool_uses, custom_uses)
                    answered.add(event_id)
    check_eq(len(tool_uses), 1, "bash calls")
    check_eq(len(custom_uses), 1, "custom tool calls")
    check_eq(answered, set(tool_uses) | set(custom_uses), "the calls answered")
    check(messages and messages[-1] == FINAL_TEXT, f"the last agent.message is not {FINAL_TEXT!r}: {messages!r}")
    kinds = [event.type for event in events]
    for kind in ("user.message", "user.tool_confirmation", "user.custom_tool_result", "session.status_running"):
        check(kind in kinds, f"the stream never carried {kind}: {kinds}")
    return events


def answer(sdk, session_id, event_id, tool_uses, custom_uses):
    if event_id in tool_uses:
        event = {"type": "user.tool_confirmation", "tool_use_id": event_id, "result": "allow"}
    elif event_id in custom_uses:
        event = {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": event_id,
            "content": [{"type": "text", "text": "42"}],
        }
    else:
        fail(f"requires_action names {event_id}, which the stream never showed as a tool use")
    sent = sdk.beta.sessions.events.send(session_id, events=[event])
    check(sent.data and sent.data[0].type == event["type"], f"events.send echoed {sent.data!r}")


def next_event(stream, waiting_for):
    try:
        return next(stream)
    except StopIteration:
        fail(f"the stream ended while waiting for {waiting_for}")


def drain(stream):
    """The events left on the stream until it ends (it must, after session.deleted)."""
    tail = []
    for event in stream:
        tail.append(event)
        if event.type == "session.deleted":
            break
    stream.close()
    return tail


def list_events(sdk, session_id):
    """Every event, fetched PAGE_LIMIT at a time with the SDK's cursor pages."""
    first = sdk.beta.sessions.events.list(session_id, limit=PAGE_LIMIT)
    events, pages = [], 0
    for page in first.iter_pages():
        pages += 1
        check(len(page.data) <= PAGE_LIMIT, f"a page of {len(page.data)} events exceeds limit={PAGE_LIMIT}")
        events.extend(page.data)
    check(pages >= 3, f"only {pages} pages of {len(events)} events with limit={PAGE_LIMIT}")
    seqs = [seq_of(event) for event in events]
    check(seqs == sorted(set(seqs)), f"listed seqs are not strictly increasing: {seqs}")
    ids = [event.id for event in events]
    check(len(ids) == len(set(ids)), f"an event id is listed twice: {ids}")
    return events, pages


def compare(streamed, listed):
    """Everything the stream carried is listed with the same seq, and nothing after it is missing."""
    listed_by_id = {event.id: (seq_of(event), event.type) for event in listed}
    seqs = [seq_of(event) for event in streamed]
    check(seqs == sorted(set(seqs)), f"streamed seqs are not strictly increasing: {seqs}")
    for event in streamed:
        check_eq(listed_by_id.get(event.id), (seq_of(event), event.type), f"the listing of streamed {event.id}")
    streamed_ids = {event.id for event in streamed}
    missed = [(seq_of(e), e.type) for e in listed if seq_of(e) >= seqs[0] and e.id not in streamed_ids]
    check(not missed, f"events committed after the stream opened were not streamed: {missed}")


def check_shapes(listed):
    """Fields every client relies on: event ids, processed_at, per-request model usage."""
    for event in listed:
        check(event.id.startswith("sevt_"), f"event id {event.id!r} lacks the sevt_ prefix")
        check(event.processed_at is not None, f"a listed event has no processed_at: {event!r}")
        if event.type == "span.model_request_end":
            usage = event.model_usage
            check(
                usage is not None and isinstance(usage.input_tokens, int) and isinstance(usage.output_tokens, int),
                f"span.model_request_end has no model_usage {{input_tokens, output_tokens, ...}}: {event.to_dict()}",
            )


def check_live_only(sdk, session_id, listed):
    """A stream opened without Last-Event-ID carries only what is committed after it opened."""
    last = seq_of(listed[-1])
    with sdk.beta.sessions.events.stream(session_id) as stream:
        message = {"type": "user.message", "content": [{"type": "text", "text": "anything else?"}]}
        sdk.beta.sessions.events.send(session_id, events=[message])
        first = next_event(stream, "the second message")
        check_eq((first.type, seq_of(first)), ("user.message", last + 1), "the first event of a new live stream")
        event = first
        while not (event.type == "session.status_idle" and event.stop_reason.type == "end_turn"):
            event = next_event(stream, "the second turn to end")


def check_filters(sdk, session_id, listed):
    messages = list(sdk.beta.sessions.events.list(session_id, types=["agent.message"]))
    expected = [event.id for event in listed if event.type == "agent.message"]
    check_eq([event.id for event in messages], expected, "events.list(types=['agent.message'])")
    newest = sdk.beta.sessions.events.list(session_id, limit=2, order="desc")
    check_eq([e.id for e in newest.data], [e.id for e in reversed(listed[-2:])], "events.list(order='desc', limit=2)")


def clean_up(sdk, agent, environment):
    archived = sdk.beta.agents.archive(agent.id)
    check(archived.archived_at is not None, f"an archived agent has no archived_at: {archived!r}")
    deleted = sdk.beta.environments.delete(environment.id)
    check_eq((deleted.id, deleted.type), (environment.id, "environment_deleted"), "the environment delete answer")


if __name__ == "__main__":
    main(run, __doc__)
