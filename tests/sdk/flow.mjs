#!/usr/bin/env node
// The basic Managed Agents flow, driven with the official TypeScript SDK
// (@anthropic-ai/sdk 1.16.0); the same checks as flow.py.
//
// Creates an agent (bash `always_ask` + the custom tool `lookup`), an environment and a
// session; opens the session's stream with the SDK's own `events.stream` before sending;
// sends a message; allows the bash call, answers the custom tool; waits for the final
// `agent.message` and the `end_turn` idle; lists the events a few at a time (several
// pages) and checks they are the streamed ones, once each, in seq order; then retrieves,
// archives and deletes the session, and checks its stream ends with `session.deleted`.
//
// The agent's model (e.g. `scripted:flow.json`) must play tests/sdk/flow.script.json.
//
//   node flow.mjs --base-url http://127.0.0.1:8080 --api-key KEY --model scripted:flow.json
//
// Settings may also come from AGENTD_BASE_URL, AGENTD_API_KEY, AGENTD_MODEL. The SDK is
// loaded from AGENTD_SDK_NODE_DIR (default /var/cache/agentd/node, where scripts/setup.sh
// installs it), else from wherever Node resolves `@anthropic-ai/sdk`.

import { createRequire } from 'node:module';
import path from 'node:path';

const NAME = 'flow.mjs';
const BASH_OUTPUT = 'hello-from-bash';
const FINAL_TEXT = 'All done: 42';
const PAGE_LIMIT = 3;

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function checkEq(actual, expected, what) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) fail(`${what}: expected ${e}, got ${a}`);
}

function settings() {
  const options = {
    baseUrl: process.env.AGENTD_BASE_URL,
    apiKey: process.env.AGENTD_API_KEY,
    model: process.env.AGENTD_MODEL,
    timeout: Number(process.env.AGENTD_SDK_TIMEOUT ?? 120),
  };
  const argv = process.argv.slice(2);
  const flags = { '--base-url': 'baseUrl', '--api-key': 'apiKey', '--model': 'model', '--timeout': 'timeout' };
  for (let index = 0; index < argv.length; index += 2) {
    const key = flags[argv[index]];
    if (!key || argv[index + 1] === undefined) fail(`unknown or incomplete argument ${argv[index]}`);
    options[key] = key === 'timeout' ? Number(argv[index + 1]) : argv[index + 1];
  }
  for (const [key, flag] of [['baseUrl', '--base-url'], ['apiKey', '--api-key'], ['model', '--model']]) {
    if (!options[key]) fail(`${flag} is required`);
  }
  return options;
}

async function loadSdk() {
  const dir = process.env.AGENTD_SDK_NODE_DIR ?? '/var/cache/agentd/node';
  try {
    const require = createRequire(path.join(dir, 'node_modules', 'noop.js'));
    return require('@anthropic-ai/sdk');
  } catch (error) {
    try {
      return await import('@anthropic-ai/sdk');
    } catch {
      fail(`cannot load @anthropic-ai/sdk from ${dir} (run scripts/setup.sh): ${error.message}`);
    }
  }
}

function seqOf(event) {
  check(Number.isInteger(event.seq), `event ${event.type} ${event.id} has no integer seq: ${JSON.stringify(event)}`);
  return event.seq;
}

function textOf(content) {
  return (content ?? []).map((block) => block.text ?? '').join('');
}

async function createAgentAndEnvironment(client, model) {
  const agent = await client.beta.agents.create({
    name: 'sdk flow (node)',
    model,
    system: 'You are a test.',
    tools: [
      { type: 'agent_toolset_20260401', configs: [{ name: 'bash', permission_policy: { type: 'always_ask' } }] },
      {
        type: 'custom',
        name: 'lookup',
        description: 'Looks a key up; answered by the client.',
        input_schema: { type: 'object', properties: { key: { type: 'string' } } },
      },
    ],
  });
  checkEq(agent.type, 'agent', 'agent.type');
  check(agent.id.startsWith('agent_'), `agent id ${agent.id} lacks the agent_ prefix`);
  checkEq(agent.version, 1, "a new agent's version");
  checkEq(agent.model?.id, model, 'agent.model.id');
  checkEq(agent.tools.map((tool) => tool.type), ['agent_toolset_20260401', 'custom'], "the agent's tool types");
  const bash = agent.tools[0].configs.find((config) => config.name === 'bash');
  checkEq(bash?.permission_policy?.type, 'always_ask', "bash's permission policy");
  checkEq(agent.tools[1].name, 'lookup', "the custom tool's name");
  checkEq((await client.beta.agents.retrieve(agent.id)).id, agent.id, "the retrieved agent's id");

  const environment = await client.beta.environments.create({
    name: 'sdk flow environment (node)',
    config: { type: 'cloud', networking: { type: 'limited', allowed_hosts: [] } },
  });
  checkEq(environment.type, 'environment', 'environment.type');
  check(environment.id.startsWith('env_'), `environment id ${environment.id} lacks the env_ prefix`);
  checkEq(environment.config.type, 'cloud', 'environment.config.type');
  checkEq(environment.config.networking?.type, 'limited', 'environment.config.networking.type');
  return { agent, environment };
}

async function nextEvent(iterator, waitingFor) {
  const { value, done } = await iterator.next();
  if (done) fail(`the stream ended while waiting for ${waitingFor}`);
  return value;
}

async function answer(client, sessionId, eventId, toolUses, customUses) {
  let event;
  if (toolUses.has(eventId)) {
    event = { type: 'user.tool_confirmation', tool_use_id: eventId, result: 'allow' };
  } else if (customUses.has(eventId)) {
    event = { type: 'user.custom_tool_result', custom_tool_use_id: eventId, content: [{ type: 'text', text: '42' }] };
  } else {
    fail(`requires_action names ${eventId}, which the stream never showed as a tool use`);
  }
  const sent = await client.beta.sessions.events.send(sessionId, { events: [event] });
  checkEq(sent.data?.[0]?.type, event.type, "the echoed event's type");
}

// Reads the stream until the turn's `end_turn` idle, answering what it asks for.
async function playTurn(client, sessionId, iterator) {
  const events = [];
  const toolUses = new Map();
  const customUses = new Map();
  const answered = new Set();
  const messages = [];
  for (;;) {
    const event = await nextEvent(iterator, 'the turn to end');
    events.push(event);
    seqOf(event);
    if (event.type === 'session.error') fail(`the session reported an error: ${JSON.stringify(event)}`);
    if (event.type === 'agent.tool_use') {
      checkEq(event.name, 'bash', 'the tool used');
      checkEq(event.evaluated_permission, 'ask', 'agent.tool_use.evaluated_permission');
      toolUses.set(event.id, event);
    } else if (event.type === 'agent.custom_tool_use') {
      checkEq([event.name, event.input], ['lookup', { key: 'answer' }], 'the custom tool call');
      customUses.set(event.id, event);
    } else if (event.type === 'agent.tool_result') {
      check(toolUses.has(event.tool_use_id), `a tool result for an unknown call: ${JSON.stringify(event)}`);
      check(textOf(event.content).includes(BASH_OUTPUT), `the bash result lacks ${BASH_OUTPUT}`);
    } else if (event.type === 'agent.message') {
      messages.push(textOf(event.content));
    } else if (event.type === 'session.status_idle') {
      if (event.stop_reason.type === 'end_turn') break;
      checkEq(event.stop_reason.type, 'requires_action', 'the stop reason of a turn that is not over');
      for (const eventId of event.stop_reason.event_ids) {
        if (answered.has(eventId)) continue;
        await answer(client, sessionId, eventId, toolUses, customUses);
        answered.add(eventId);
      }
    }
  }
  checkEq([toolUses.size, customUses.size, answered.size], [1, 1, 2], 'bash calls, custom calls, answers');
  checkEq(messages.at(-1), FINAL_TEXT, 'the last agent.message');
  const kinds = events.map((event) => event.type);
  for (const kind of ['user.message', 'user.tool_confirmation', 'user.custom_tool_result', 'session.status_running']) {
    check(kinds.includes(kind), `the stream never carried ${kind}: ${kinds}`);
  }
  return events;
}

// Every event, fetched PAGE_LIMIT at a time with the SDK's cursor pages.
async function listEvents(client, sessionId) {
  const first = await client.beta.sessions.events.list(sessionId, { limit: PAGE_LIMIT });
  const events = [];
  let pages = 0;
  for await (const page of first.iterPages()) {
    pages += 1;
    check(page.data.length <= PAGE_LIMIT, `a page of ${page.data.length} events exceeds limit=${PAGE_LIMIT}`);
    events.push(...page.data);
  }
  check(pages >= 3, `only ${pages} pages of ${events.length} events with limit=${PAGE_LIMIT}`);
  const seqs = events.map(seqOf);
  check(seqs.every((seq, i) => i === 0 || seq > seqs[i - 1]), `listed seqs are not strictly increasing: ${seqs}`);
  check(new Set(events.map((e) => e.id)).size === events.length, 'an event id is listed twice');
  return { events, pages };
}

// Everything the stream carried is listed with the same seq, and nothing after it is missing.
function compare(streamed, listed) {
  const listedById = new Map(listed.map((event) => [event.id, [seqOf(event), event.type]]));
  const seqs = streamed.map(seqOf);
  check(seqs.every((seq, i) => i === 0 || seq > seqs[i - 1]), `streamed seqs are not strictly increasing: ${seqs}`);
  for (const event of streamed) {
    checkEq(listedById.get(event.id), [seqOf(event), event.type], `the listing of streamed ${event.id}`);
  }
  const streamedIds = new Set(streamed.map((event) => event.id));
  const missed = listed.filter((event) => seqOf(event) >= seqs[0] && !streamedIds.has(event.id));
  check(missed.length === 0, `events committed after the stream opened were not streamed: ${JSON.stringify(missed)}`);
}

// Fields every client relies on: event ids, processed_at, per-request model usage.
function checkShapes(listed) {
  for (const event of listed) {
    check(event.id.startsWith('sevt_'), `event id ${event.id} lacks the sevt_ prefix`);
    check(event.processed_at, `a listed event has no processed_at: ${JSON.stringify(event)}`);
    if (event.type === 'span.model_request_end') {
      const usage = event.model_usage;
      check(
        Number.isInteger(usage?.input_tokens) && Number.isInteger(usage?.output_tokens),
        `span.model_request_end has no model_usage {input_tokens, output_tokens, ...}: ${JSON.stringify(event)}`,
      );
    }
  }
}

async function checkFilters(client, sessionId, listed) {
  const messages = [];
  for await (const event of client.beta.sessions.events.list(sessionId, { types: ['agent.message'] })) {
    messages.push(event.id);
  }
  const expected = listed.filter((event) => event.type === 'agent.message').map((event) => event.id);
  checkEq(messages, expected, "events.list({types: ['agent.message']})");
  const newest = await client.beta.sessions.events.list(sessionId, { limit: 2, order: 'desc' });
  const last = listed.slice(-2).reverse().map((event) => event.id);
  checkEq(newest.data.map((event) => event.id), last, "events.list({order: 'desc', limit: 2})");
}

// The events left on the stream until it ends (it must, after session.deleted).
async function drain(iterator) {
  const tail = [];
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) return tail;
    tail.push(value);
    if (value.type === 'session.deleted') return tail;
  }
}

async function run(sdk, options) {
  const Anthropic = sdk.Anthropic ?? sdk.default;
  const client = new Anthropic({ baseURL: options.baseUrl, apiKey: options.apiKey, authToken: null, timeout: 60_000 });
  const { agent, environment } = await createAgentAndEnvironment(client, options.model);
  const session = await client.beta.sessions.create({
    agent: agent.id,
    environment_id: environment.id,
    title: 'sdk flow (node)',
  });
  checkEq([session.type, session.status], ['session', 'idle'], "a new session's type and status");
  check(session.id.startsWith('sesn_'), `session id ${session.id} lacks the sesn_ prefix`);
  const pinned = [session.agent?.id, session.environment_id];
  checkEq(pinned, [agent.id, environment.id], "the session's agent and environment");

  const stream = await client.beta.sessions.events.stream(session.id);
  const iterator = stream[Symbol.asyncIterator]();
  const sent = await client.beta.sessions.events.send(session.id, {
    events: [{ type: 'user.message', content: [{ type: 'text', text: 'Check, then look the answer up.' }] }],
  });
  checkEq(sent.data?.map((event) => event.type), ['user.message'], 'the echoed events');
  const streamed = await playTurn(client, session.id, iterator);
  const { events: listed, pages } = await listEvents(client, session.id);
  compare(streamed, listed);
  checkShapes(listed);
  const stored = listed.find((event) => event.id === sent.data[0].id);
  check(stored, `the echoed event ${sent.data[0].id} is not in the log`);
  checkEq(sent.data[0].processed_at, stored.processed_at, "the echo's processed_at (the stored event's)");
  await checkFilters(client, session.id, listed);

  const retrieved = await client.beta.sessions.retrieve(session.id);
  checkEq([retrieved.id, retrieved.status], [session.id, 'idle'], "the retrieved session's id and status");
  const archived = await client.beta.sessions.archive(session.id);
  check(archived.archived_at, `an archived session has no archived_at: ${JSON.stringify(archived)}`);
  const deleted = await client.beta.sessions.delete(session.id);
  checkEq([deleted.id, deleted.type], [session.id, 'session_deleted'], 'the delete answer');
  const tail = await drain(iterator);
  checkEq(tail.at(-1)?.type, 'session.deleted', 'the last event on the stream');
  try {
    await client.beta.sessions.retrieve(session.id);
    fail('a deleted session can still be retrieved');
  } catch (error) {
    if (!(error instanceof sdk.NotFoundError)) throw error;
  }
  const archivedAgent = await client.beta.agents.archive(agent.id);
  check(archivedAgent.archived_at, `an archived agent has no archived_at: ${JSON.stringify(archivedAgent)}`);
  const deletedEnvironment = await client.beta.environments.delete(environment.id);
  checkEq([deletedEnvironment.id, deletedEnvironment.type], [environment.id, 'environment_deleted'], 'env delete');
  return (
    `session ${session.id}: ${listed.length} events in ${pages} pages, each streamed once in seq order; ` +
    `final message '${FINAL_TEXT}'; archived and deleted`
  );
}

async function main() {
  let options;
  try {
    options = settings();
    const timer = setTimeout(() => {
      console.error(`${NAME}: FAIL: timed out after ${options.timeout} s`);
      process.exit(1);
    }, options.timeout * 1000);
    timer.unref();
    const sdk = await loadSdk();
    const summary = await run(sdk, options);
    console.log(`${NAME}: ok: ${summary}`);
    process.exit(0);
  } catch (error) {
    if (error instanceof Failure) {
      console.error(`${NAME}: FAIL: ${error.message}`);
    } else if (error?.status !== undefined) {
      console.error(
        `${NAME}: FAIL: unexpected ${error.status} (${error.constructor.name}): ${JSON.stringify(error.error)} ` +
          `(request-id ${error.requestID})`,
      );
    } else {
      console.error(`${NAME}: FAIL: ${error?.stack ?? error}`);
    }
    process.exit(1);
  }
}

await main();
