#!/usr/bin/env bash
# Measures the Managed Agents HTTP API against agentd's native QUIC API on one
# real 3-node cluster, side by side in one run, and prints Markdown tables on
# stdout (progress goes to stderr).
#
#   scripts/bench-http.sh [--events-1 N] [--events-64 N] [--get-seconds S]
#                         [--stream-sessions S] [--stream-subscribers K]
#                         [--stream-rate R] [--stream-seconds D]
#                         [--agentd-bin PATH] [--work-dir DIR]
#
# The cluster: 3 nodes on loopback, node 1 `--init --shards 64`, the others
# `--join`, each serving the HTTP API (`--http`). Every benchmark talks to
# node 1 (QUIC 127.0.0.1:7101, HTTP 127.0.0.1:8101), except the stream
# subscribers, which are spread over the three nodes' HTTP APIs.
#
#   append  C closed-loop clients, each with its own connection, session and
#           API key, append N/C 100-byte user messages: native QUIC and HTTP
#           (POST /v1/sessions/{id}/events, HTTP/1.1 keep-alive); C = 1, 64.
#   get     C closed-loop clients read their session for S seconds: QUIC
#           GetSession and HTTP GET /v1/sessions/{id}; C = 1, 8, 64 (8: the
#           read target, 3 x 350/s per core at p50 <= 2 ms, needs more than
#           one key's 500/s and less queueing than 64 clients give).
#           Both run in two rounds per system, QUIC, HTTP, HTTP, QUIC.
#   stream  K SSE subscribers on S sessions while one writer appends R
#           events/s over QUIC for D seconds; delivery latency from the
#           writer's acknowledgement to each subscriber's frame, frames
#           delivered vs expected, the nodes' RSS.
#
#   --events-1 N          appends per system at 1 client (default 2000)
#   --events-64 N         appends per system at 64 clients (default 20000)
#   --get-seconds S       seconds per system and client count (default 10)
#   --stream-sessions S   sessions of the stream benchmark (default 100)
#   --stream-subscribers K  subscribers in total (default 1000)
#   --stream-rate R       appends per second of the writer (default 100)
#   --stream-seconds D    seconds the writer appends (default 20)
#   --agentd-bin P        use this agentd binary instead of building the release one
#   --work-dir DIR        keep cluster logs and raw results in DIR (default: a
#                         temporary directory, removed after a successful run)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ready_timeout_seconds=60
stop_timeout_seconds=15
quic_ports=(7101 7102 7103)
http_ports=(8101 8102 8103)
shards=64

events_1=2000
events_64=20000
get_seconds=10
stream_sessions=100
stream_subscribers=1000
stream_rate=100
stream_seconds=20
agentd_bin=""
work_dir=""

log() { echo "bench-http: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --events-1) events_1=${2:?--events-1 needs a number}; shift 2 ;;
    --events-64) events_64=${2:?--events-64 needs a number}; shift 2 ;;
    --get-seconds) get_seconds=${2:?--get-seconds needs a number}; shift 2 ;;
    --stream-sessions) stream_sessions=${2:?--stream-sessions needs a number}; shift 2 ;;
    --stream-subscribers) stream_subscribers=${2:?--stream-subscribers needs a number}; shift 2 ;;
    --stream-rate) stream_rate=${2:?--stream-rate needs a number}; shift 2 ;;
    --stream-seconds) stream_seconds=${2:?--stream-seconds needs a number}; shift 2 ;;
    --agentd-bin) agentd_bin=${2:?--agentd-bin needs a path}; shift 2 ;;
    --work-dir) work_dir=${2:?--work-dir needs a path}; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
for count in "$events_1" "$events_64" "$get_seconds" "$stream_sessions" "$stream_subscribers" \
  "$stream_rate" "$stream_seconds"; do
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "counts, rates and durations must be positive integers, got '$count'"
done

# One SSE subscriber is one open connection: this process and the nodes need
# a file descriptor each (agentd forbids unsafe code, so the bench cannot call
# setrlimit itself). Children inherit the limit.
fds_needed=$((stream_subscribers + 1024))
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$fds_needed" ]; then
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$fds_needed" ]; then
    ulimit -Sn "$fds_needed"
  else
    die "$stream_subscribers subscribers need $fds_needed open files; the hard limit is $hard"
  fi
fi

keep_work_dir=true
if [ -z "$work_dir" ]; then
  work_dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-http.XXXXXX")
  keep_work_dir=false
fi
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)
results="$work_dir/results.jsonl"
: >"$results"

# What is running right now, so that the EXIT trap can stop it.
agentd_pids=()
bench_pid=""

# True while the process exists and is not a zombie.
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != "Z" ]
}

stop_agentd() {
  local pid deadline=$((SECONDS + stop_timeout_seconds))
  for pid in "${agentd_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${agentd_pids[@]}"; do
    while running "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "agentd pid $pid ignored SIGTERM for ${stop_timeout_seconds}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
  done
  agentd_pids=()
}

cleanup() {
  local status=$?
  if [ -n "$bench_pid" ]; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  if [ "${#agentd_pids[@]}" -gt 0 ]; then
    stop_agentd
  fi
  if [ "$status" -eq 0 ] && [ "$keep_work_dir" = false ]; then
    rm -rf "$work_dir"
  else
    log "logs and raw results kept in $work_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check_agentd_alive() {
  local pid
  for pid in "${agentd_pids[@]}"; do
    running "$pid" || die "an agentd node exited; see $work_dir/cluster/n*.log"
  done
}

# Returns 0 once node 1 reports three nodes, every group with three voters
# and a leader, and every node's HTTP API accepts connections.
cluster_ready() {
  local status port
  status=$("$agentd_bin" cluster status --addr 127.0.0.1:7101 --api-key "$api_key" --json 2>/dev/null) || return 1
  python3 -c '
import json, sys
status = json.loads(sys.argv[1])
groups = status["groups"]
ready = len(status["nodes"]) == 3 and len(groups) == status["shards"] + 1 \
    and all(len(group["voters"]) == 3 and group["leader"] for group in groups)
sys.exit(0 if ready else 1)' "$status" 2>/dev/null || return 1
  for port in "${http_ports[@]}"; do
    ss -Hlnt "sport = :$port" | grep -q . || return 1
  done
}

start_cluster() {
  local dir="$work_dir/cluster" port node deadline=$((SECONDS + ready_timeout_seconds))
  for port in "${quic_ports[@]}"; do
    ! ss -Hlnu "sport = :$port" | grep -q . || die "UDP port $port is in use (an agentd still running?)"
  done
  for port in "${http_ports[@]}"; do
    ! ss -Hlnt "sport = :$port" | grep -q . || die "TCP port $port is in use (an agentd still running?)"
  done
  rm -rf "$dir"
  mkdir -p "$dir"
  "$agentd_bin" start --node-id 1 --listen 127.0.0.1:7101 --http 127.0.0.1:8101 --data-dir "$dir/n1" \
    --init --shards "$shards" </dev/null >"$dir/n1.log" 2>&1 &
  agentd_pids+=("$!")
  until [ -s "$dir/n1/join-token" ] && [ -s "$dir/n1/admin-key" ]; do
    check_agentd_alive
    [ "$SECONDS" -lt "$deadline" ] || die "no join token or admin key in $dir/n1 after ${ready_timeout_seconds}s"
    sleep 0.2
  done
  api_key=$(cat "$dir/n1/admin-key")
  for node in 2 3; do
    "$agentd_bin" start --node-id "$node" --listen "127.0.0.1:710$node" --http "127.0.0.1:810$node" \
      --data-dir "$dir/n$node" --join 127.0.0.1:7101 --token "$(cat "$dir/n1/join-token")" \
      </dev/null >"$dir/n$node.log" 2>&1 &
    agentd_pids+=("$!")
  done
  until cluster_ready; do
    check_agentd_alive
    [ "$SECONDS" -lt "$deadline" ] || die "cluster not ready after ${ready_timeout_seconds}s; see $dir/n*.log"
    sleep 0.2
  done
  log "3 nodes ready, pids ${agentd_pids[*]} (logs in $dir)"
}

# Runs one `agentd bench http` in the background (so that a signal ends the
# wait at once and the EXIT trap can stop it), checks that the nodes are still
# up, and appends its JSON report to the results.
run_bench() {
  local name=$1 output_file="$work_dir/$1.out"
  shift
  log "$name: agentd bench http $*"
  "$agentd_bin" bench http "$@" --addr 127.0.0.1:7101 --api-key "$api_key" --json >"$output_file" &
  bench_pid=$!
  wait "$bench_pid" || die "$name failed; see $output_file and $work_dir/cluster/n*.log"
  bench_pid=""
  check_agentd_alive
  python3 - "$name" "$output_file" >>"$results" <<'EOF'
import json, sys
name, output = sys.argv[1], open(sys.argv[2]).read()
lines = [line for line in output.splitlines() if line.lstrip().startswith("{")]
if not lines:
    sys.exit(f"bench-http: no JSON line in the output of {name}: {output!r}")
report = json.loads(lines[-1])
report["name"] = name
print(json.dumps(report))
EOF
}

print_tables() {
  python3 - "$results" "$(nproc)" <<'EOF'
import json, sys
path, cores = sys.argv[1], sys.argv[2]
reports = [json.loads(line) for line in open(path) if line.strip()]
notes = []
print("| bench | clients | system | ok | errors | 429s | p50 ms | p99 ms | max ms | per s | per s per core "
      "| http / quic | node CPU ms/req | client CPU ms/req |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in reports:
    if r["bench"] not in ("append", "get"):
        continue
    what = "append (POST events)" if r["bench"] == "append" else "get (GET session)"
    for t in [r["quic"], r["http"]]:
        if t is None:
            continue
        ratio = ""
        if t["system"] == "http" and r["quic"]:
            ratio = f"{t['per_sec'] / max(r['quic']['per_sec'], 1e-9):.2f}"
        throttled = t["throttled"] if t["system"] == "http" else "-"
        print(f"| {what} | {t['clients']} | {t['system']} | {t['ok']} | {t['errors']} | {throttled} | {t['p50_ms']:.2f} | "
              f"{t['p99_ms']:.2f} | {t['max_ms']:.2f} | {t['per_sec']:.0f} | {t['per_sec_per_core']:.0f} | {ratio} | "
              f"{t['node_cpu_ms_per_request']:.3f} | {t['client_cpu_ms_per_request']:.3f} |")
        if t["errors"]:
            notes.append(f"{what}, {t['system']}, {t['clients']} clients: {t['errors']} errors.")
    keys = r["keys"]
    if r["bench"] == "append" and r["target_met"] is not None:
        verdict = "met" if r["target_met"] else "MISSED"
        notes.append(f"append, {r['clients']} client(s), {keys}: HTTP at {r['http_over_quic']:.2f}x QUIC's "
                     f"throughput (target >= 0.85): {verdict}.")
    if r["bench"] == "get":
        verdict = "met" if r["target_met"] else "MISSED"
        notes.append(f"get, {r['clients']} client(s), {keys}: HTTP {r['http']['per_sec_per_core']:.0f}/s per core at "
                     f"p50 {r['http']['p50_ms']:.2f} ms (target >= 1050/s per core at p50 <= 2 ms): {verdict}.")
for r in reports:
    if r["bench"] != "stream":
        continue
    print()
    print("| subscribers | sessions | appends/s | appends | frames expected | delivered | missing | duplicate "
          "| send→ack p50 / p99 ms | ack→delivery p50 / p99 / max ms | send→delivery p50 / p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    a, d, s = r["send_to_ack"], r["ack_to_delivery"], r["send_to_delivery"]
    print(f"| {r['subscribers_connected']} of {r['subscribers']} | {r['sessions']} | {r['rate_per_sec']:.0f} | "
          f"{r['appends']} | {r['frames_expected']} | {r['frames_delivered']} | {r['frames_missing']} | "
          f"{r['frames_duplicate']} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | "
          f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} / {d['max_ms']:.2f} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} |")
    print()
    print("| node pid | RSS before MiB | with subscribers | peak while streaming | end |")
    print("|---:|---:|---:|---:|---:|")
    fmt = lambda v: "?" if v is None else f"{v:.0f}"
    for n in r["nodes"]:
        print(f"| {n['pid']} | {fmt(n['rss_before_mib'])} | {fmt(n['rss_connected_mib'])} | "
              f"{fmt(n['rss_peak_mib'])} | {fmt(n['rss_end_mib'])} |")
    for field in ["connect_errors", "append_errors", "frames_unexpected", "frames_malformed", "frames_other",
                  "streams_ended_early"]:
        if r[field]:
            notes.append(f"stream: {field} = {r[field]}")
    if r["first_connect_error"]:
        notes.append(f"stream: first connect error: {r['first_connect_error']}")
    if r["first_stream_end"]:
        notes.append(f"stream: first early end: {r['first_stream_end']}")
    notes.append(f"stream: {r['subscribers_connected']} subscribers connected in {r['connect_seconds']:.1f} s; "
                 f"{r['delivered_before_ack']} frames arrived before the writer read the ack (counted as 0 ms).")
print()
print(f"3 nodes on loopback, {cores} cores shared by the nodes and the load generator. append and get: "
      "each client has its own connection, session and API key; two rounds per system (QUIC, HTTP, HTTP, QUIC); "
      "429s (a key's rate limit, 500/s per node) are waited out and retried, their wait counted in the latency "
      "(the native client does the same, silently); CPU per request: user + system time of the three nodes "
      "together, and of the load generator, over the requests answered. stream: delivery latency from the append's acknowledgement "
      "as the writer (QUIC, same process) read it.")
for note in notes:
    print(f"- {note}")
EOF
}

# Build before the cluster starts, so that compiling never competes with a measurement.
if [ -z "$agentd_bin" ]; then
  log "building agentd (release)"
  # shellcheck source=scripts/env.sh
  agentd_bin=$(cd "$repo" && source scripts/env.sh && cargo build --release --quiet -p agentd >&2 \
    && echo "$CARGO_TARGET_DIR/release/agentd")
fi
[ -x "$agentd_bin" ] || die "agentd binary not found at $agentd_bin"
log "$(nproc) cores; open files limit $(ulimit -Sn)"

api_key=""
start_cluster
nodes=$(IFS=,; echo "${agentd_pids[*]}")
run_bench append-1 append --http 127.0.0.1:8101 --clients 1 --events "$events_1" --node-pids "$nodes"
run_bench append-64 append --http 127.0.0.1:8101 --clients 64 --events "$events_64" --node-pids "$nodes"
run_bench get-1 get --http 127.0.0.1:8101 --clients 1 --seconds "$get_seconds" --node-pids "$nodes"
run_bench get-8 get --http 127.0.0.1:8101 --clients 8 --seconds "$get_seconds" --node-pids "$nodes"
run_bench get-64 get --http 127.0.0.1:8101 --clients 64 --seconds "$get_seconds" --node-pids "$nodes"
run_bench stream stream --http 127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103 \
  --sessions "$stream_sessions" --subscribers "$stream_subscribers" --rate "$stream_rate" \
  --seconds "$stream_seconds" --node-pids "$nodes"
stop_agentd
print_tables
