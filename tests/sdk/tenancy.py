#!/usr/bin/env python3
"""Workspaces are walls, and keys are checked, as the official Python SDK sees them.

Workspace A's objects (agent, environment, session with events, vault with a credential)
are invisible to workspace B's key: every endpoint on them answers 404 (`NotFoundError`,
`not_found_error` envelope), nothing B tries changes them, and neither workspace's lists
show the other's objects. A missing or wrong key answers 401 (`AuthenticationError`); so
does a key once revoked: the script uses `--key-c` (of workspace A) successfully, prints
`REVOKE` and waits for a line `revoked` on stdin (the caller revokes it meanwhile), then
expects 401 with it, on two nodes, as `Authorization: Bearer` and as `x-api-key`.

    python tenancy.py --urls URL1,URL2 --key-a KEY --key-b KEY --key-c KEY --model scripted:tenancy.json
"""

import sys

import anthropic

from common import CLOUD_LIMITED, check, check_envelope, check_eq, client, expect_status_error, httpx, main, require

NOT_FOUND = (anthropic.NotFoundError, 404, "not_found_error")
UNAUTHENTICATED = (anthropic.AuthenticationError, 401, "authentication_error")
ENV_CREDENTIAL = {
    "type": "environment_variable",
    "secret_name": "TENANCY_TOKEN",
    "secret_value": "s3cret",
    "networking": {"type": "unrestricted"},
}


def make_objects(sdk, model, tag):
    """An agent, an environment, a session with a few events, a vault with a credential."""
    agent = sdk.beta.agents.create(name=f"tenancy {tag}", model=model)
    environment = sdk.beta.environments.create(name=f"tenancy {tag}", config=CLOUD_LIMITED)
    session = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id, title=f"tenancy {tag}")
    sdk.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hello"}]}]
    )
    vault = sdk.beta.vaults.create(display_name=f"tenancy {tag}")
    credential = sdk.beta.vaults.credentials.create(vault.id, auth=ENV_CREDENTIAL, display_name=f"tenancy {tag}")
    return {
        "agent": agent.id,
        "environment": environment.id,
        "session": session.id,
        "vault": vault.id,
        "credential": credential.id,
    }


def foreign_calls(sdk, ids, own):
    """Every call B can make on A's objects (`ids`), with B's own objects (`own`) where one is needed."""
    agents, environments, sessions, vaults = sdk.beta.agents, sdk.beta.environments, sdk.beta.sessions, sdk.beta.vaults
    agent, env, session, vault, credential = (
        ids[k] for k in ("agent", "environment", "session", "vault", "credential")
    )
    message = [{"type": "user.message", "content": [{"type": "text", "text": "from B"}]}]
    return [
        ("agents.retrieve", lambda: agents.retrieve(agent)),
        ("agents.retrieve(version=1)", lambda: agents.retrieve(agent, version=1)),
        ("agents.update", lambda: agents.update(agent, version=1, name="stolen")),
        ("agents.versions.list", lambda: agents.versions.list(agent)),
        ("agents.archive", lambda: agents.archive(agent)),
        ("environments.retrieve", lambda: environments.retrieve(env)),
        ("environments.update", lambda: environments.update(env, name="stolen")),
        ("environments.archive", lambda: environments.archive(env)),
        ("environments.delete", lambda: environments.delete(env)),
        ("sessions.create(A's agent)", lambda: sessions.create(agent=agent, environment_id=own["environment"])),
        ("sessions.create(A's environment)", lambda: sessions.create(agent=own["agent"], environment_id=env)),
        ("sessions.retrieve", lambda: sessions.retrieve(session)),
        ("sessions.update", lambda: sessions.update(session, title="stolen")),
        ("sessions.events.list", lambda: sessions.events.list(session)),
        ("sessions.events.send", lambda: sessions.events.send(session, events=message)),
        ("sessions.events.stream", lambda: sessions.events.stream(session)),
        ("sessions.archive", lambda: sessions.archive(session)),
        ("sessions.delete", lambda: sessions.delete(session)),
        ("vaults.retrieve", lambda: vaults.retrieve(vault)),
        ("vaults.update", lambda: vaults.update(vault, display_name="stolen")),
        ("vaults.credentials.list", lambda: vaults.credentials.list(vault)),
        ("vaults.credentials.create", lambda: vaults.credentials.create(vault, auth=ENV_CREDENTIAL)),
        ("vaults.credentials.retrieve", lambda: vaults.credentials.retrieve(credential, vault_id=vault)),
        ("vaults.credentials.update", lambda: vaults.credentials.update(credential, vault_id=vault, display_name="x")),
        ("vaults.credentials.archive", lambda: vaults.credentials.archive(credential, vault_id=vault)),
        ("vaults.credentials.delete", lambda: vaults.credentials.delete(credential, vault_id=vault)),
        ("vaults.archive", lambda: vaults.archive(vault)),
        ("vaults.delete", lambda: vaults.delete(vault)),
        ("sessions.create(A's vault)", lambda: sessions.create(
            agent=own["agent"], environment_id=own["environment"], vault_ids=[vault]
        )),
    ]


def check_untouched(sdk, ids, tag):
    """A's objects are as A made them, after everything B tried."""
    agent = sdk.beta.agents.retrieve(ids["agent"])
    check_eq((agent.name, agent.version, agent.archived_at), (f"tenancy {tag}", 1, None), "A's agent after B")
    environment = sdk.beta.environments.retrieve(ids["environment"])
    check_eq((environment.name, environment.archived_at), (f"tenancy {tag}", None), "A's environment after B")
    session = sdk.beta.sessions.retrieve(ids["session"])
    check_eq((session.title, session.archived_at), (f"tenancy {tag}", None), "A's session after B")
    texts = [
        block.text
        for event in sdk.beta.sessions.events.list(ids["session"])
        if event.type == "user.message"
        for block in event.content
    ]
    check_eq(texts, ["hello"], "A's session's user messages after B")
    vault = sdk.beta.vaults.retrieve(ids["vault"])
    check_eq((vault.display_name, vault.archived_at), (f"tenancy {tag}", None), "A's vault after B")
    credentials = [c.id for c in sdk.beta.vaults.credentials.list(ids["vault"], include_archived=True)]
    check_eq(credentials, [ids["credential"]], "A's vault's credentials after B")


def listed(sdk):
    """The ids each of a workspace's lists shows (archived objects included)."""
    return {
        "agent": {item.id for item in sdk.beta.agents.list(include_archived=True)},
        "environment": {item.id for item in sdk.beta.environments.list(include_archived=True)},
        "session": {item.id for item in sdk.beta.sessions.list(include_archived=True)},
        "vault": {item.id for item in sdk.beta.vaults.list(include_archived=True)},
    }


def check_lists(sdk_a, sdk_b, ids_a, ids_b):
    seen_a, seen_b = listed(sdk_a), listed(sdk_b)
    for kind in seen_a:
        check(ids_a[kind] in seen_a[kind], f"A's {kind} list lacks A's {kind} {ids_a[kind]}")
        check(ids_b[kind] in seen_b[kind], f"B's {kind} list lacks B's {kind} {ids_b[kind]}")
        check(not seen_a[kind] & seen_b[kind], f"A's and B's {kind} lists share {seen_a[kind] & seen_b[kind]}")
    by_agent = {item.id for item in sdk_b.beta.sessions.list(agent_id=ids_a["agent"], include_archived=True)}
    check(not by_agent, f"B's sessions.list(agent_id=A's agent) shows {by_agent}")


def check_unauthenticated(url, good_key, revoked_key):
    """No key, a wrong key and a revoked key: 401 with the envelope, by the SDK and raw."""
    for key, what in (("sk-not-a-key", "a wrong key"), (revoked_key, "a revoked key")):
        sdk = client(url, key, max_retries=0)
        expect_status_error(*UNAUTHENTICATED, lambda sdk=sdk: sdk.beta.agents.list(), f"agents.list with {what}")
        expect_status_error(
            *UNAUTHENTICATED,
            lambda sdk=sdk: sdk.beta.agents.create(name="x", model="scripted:tenancy.json"),
            f"agents.create with {what}",
        )
        response = httpx.get(f"{url}/v1/agents", headers={"x-api-key": key})
        check_envelope(response.status_code, body(response), response.headers, 401, "authentication_error",
                       f"GET /v1/agents with {what} as x-api-key")
    for method in ("GET", "POST"):
        response = httpx.request(method, f"{url}/v1/agents", headers={"content-type": "application/json"})
        check_envelope(response.status_code, body(response), response.headers, 401, "authentication_error",
                       f"{method} /v1/agents with no key")
    response = httpx.get(f"{url}/v1/agents", headers={"x-api-key": good_key})
    check_eq(response.status_code, 200, f"GET /v1/agents with a good key as x-api-key: {response.text[:500]}")


def body(response):
    try:
        return response.json()
    except ValueError:
        return response.text


def ask(line):
    print(line, flush=True)
    answer = sys.stdin.readline()
    check(answer, f"the caller closed stdin instead of answering {line!r}")
    return answer.strip()


def run(args):
    require(args, "urls", "key-a", "key-b", "key-c", "model")
    urls = args.urls.split(",")
    check(len(urls) >= 2, f"--urls needs two nodes, got {urls}")
    sdk_a, sdk_b = client(urls[0], args.key_a), client(urls[1], args.key_b)
    ids_a, ids_b = make_objects(sdk_a, args.model, "A"), make_objects(sdk_b, args.model, "B")

    calls = foreign_calls(sdk_b, ids_a, ids_b)
    for what, call in calls:
        expect_status_error(*NOT_FOUND, call, f"B's {what} on A's object")
    check_untouched(sdk_a, ids_a, "A")
    check_lists(sdk_a, sdk_b, ids_a, ids_b)

    sdk_c = client(urls[1], args.key_c)
    check(ids_a["agent"] in {a.id for a in sdk_c.beta.agents.list()}, "key C (of workspace A) does not see A's agent")
    check_eq(ask("REVOKE"), "revoked", "the caller's answer to REVOKE")
    for url in urls:
        check_unauthenticated(url, args.key_a, args.key_c)
    return (
        f"{len(calls)} calls of workspace B on workspace A's objects answered 404 and changed nothing; "
        "lists are per workspace; no key, a wrong key and a revoked key answered 401 on every node"
    )


def extra_args(args):
    args.add_argument("--urls", help="the base URLs of two nodes or more, comma-separated")
    args.add_argument("--key-a", help="a key of workspace A")
    args.add_argument("--key-b", help="a key of workspace B")
    args.add_argument("--key-c", help="another key of workspace A, which the caller revokes on REVOKE")


if __name__ == "__main__":
    main(run, __doc__, extra_args)
