"""MCP through agentd's HTTP API with the official Python SDK: an agent with
an MCP server and its mcp_toolset, a vault with a static_bearer credential
for the server, a session naming the vault; the scripted model calls
mcp__calc__add and the session's events show agent.mcp_tool_use and
agent.mcp_tool_result. Run by tests/tests/sdk_mcp.rs with --mcp-url/--mcp-token.
"""

import time
from urllib.parse import urlparse

from common import check, check_eq, client, main, require, text_of


def extra(args):
    args.add_argument("--mcp-url")
    args.add_argument("--mcp-token")


def run(args):
    require(args, "base-url", "api-key", "model", "mcp-url", "mcp-token")
    api = client(args.base_url, args.api_key)
    agent = api.beta.agents.create(
        name="mcp-sdk",
        model=args.model,
        mcp_servers=[{"type": "url", "name": "calc", "url": args.mcp_url}],
        tools=[{"type": "mcp_toolset", "mcp_server_name": "calc",
                "default_config": {"permission_policy": {"type": "always_allow"}}}],
    )
    check_eq([server.name for server in agent.mcp_servers], ["calc"], "the agent's MCP servers")
    check_eq(agent.tools[0].type, "mcp_toolset", "the agent's first tool")
    host = urlparse(args.mcp_url).netloc
    environment = api.beta.environments.create(
        name="mcp-sdk", config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": [host]}})
    vault = api.beta.vaults.create(display_name="mcp-sdk")
    credential = api.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "token": args.mcp_token, "mcp_server_url": args.mcp_url})
    check_eq(credential.auth.type, "static_bearer", "the credential's type")
    check(args.mcp_token not in credential.model_dump_json(), "the token is never shown again")
    session = api.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])
    api.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "add"}]}])
    deadline = time.monotonic() + 60
    while True:
        events = list(api.beta.sessions.events.list(session.id, limit=1000))
        idle = [event for event in events if event.type == "session.status_idle"]
        if idle and getattr(idle[-1].stop_reason, "type", None) == "end_turn":
            break
        check(time.monotonic() < deadline, f"the turn did not end: {[event.type for event in events]}")
        time.sleep(0.2)
    uses = [event for event in events if event.type == "agent.mcp_tool_use"]
    results = [event for event in events if event.type == "agent.mcp_tool_result"]
    check_eq([(use.name, use.mcp_server_name) for use in uses], [("add", "calc")], "the MCP tool uses")
    check_eq(getattr(uses[0], "evaluated_permission", None), "allow", "the use's evaluated permission")
    check_eq(len(results), 1, "the MCP tool results")
    check_eq(results[0].mcp_tool_use_id, uses[0].id, "what the result answers")
    check_eq(text_of(results[0].content), "5", "the tool's answer")
    check(not any(event.type == "session.error" for event in events), "no session.error")
    return f"session {session.id}: mcp__calc__add answered 5"


if __name__ == "__main__":
    main(run, __doc__, extra)
