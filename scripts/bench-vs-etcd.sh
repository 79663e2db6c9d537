#!/usr/bin/env bash
# Compares agentd's replicated session log with etcd on the same machine and the
# same workload, and prints a Markdown table on stdout (progress goes to stderr).
#
#   scripts/bench-vs-etcd.sh [--events-1 N] [--events-64 N] [--only-etcd]
#                            [--agentd-bin PATH] [--work-dir DIR]
#
# Workload (both systems): C closed-loop clients, each with its own connection,
# append N/C 100-byte writes to their own session; latency is send to ack.
# Both systems run 3 nodes on loopback and fsync before acknowledging a write.
# Each row comes from a fresh cluster, and only one cluster runs at a time, so
# the systems never compete for the machine's cores.
#
#   --events-1 N     writes for the 1-client rows (default 2000)
#   --events-64 N    writes for the 64-client rows (default 20000)
#   --only-etcd      skip building and running agentd
#   --agentd-bin P   use this agentd binary instead of building the agentd package
#   --work-dir DIR   keep cluster logs and raw results in DIR (default: a
#                    temporary directory, removed after a successful run)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
etcd_bench_target_dir=/var/cache/agentd/etcd-bench-target
agentd_ready_timeout_seconds=60
agentd_stop_timeout_seconds=15
agentd_ports=(7101 7102 7103)
value_bytes=100

events_1=2000
events_64=20000
only_etcd=false
agentd_bin=""
work_dir=""

log() { echo "bench-vs-etcd: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --events-1) events_1=${2:?--events-1 needs a number}; shift 2 ;;
    --events-64) events_64=${2:?--events-64 needs a number}; shift 2 ;;
    --only-etcd) only_etcd=true; shift ;;
    --agentd-bin) agentd_bin=${2:?--agentd-bin needs a path}; shift 2 ;;
    --work-dir) work_dir=${2:?--work-dir needs a path}; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
for count in "$events_1" "$events_64"; do
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "event counts must be positive integers, got '$count'"
done

keep_work_dir=true
if [ -z "$work_dir" ]; then
  work_dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-etcd.XXXXXX")
  keep_work_dir=false
fi
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)
results="$work_dir/results.jsonl"
: >"$results"

# What is running right now, so that the EXIT trap can stop it.
etcd_cluster_dir=""
agentd_pids=()
bench_pid=""

# True while the process exists and is not a zombie.
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != "Z" ]
}

stop_agentd() {
  local pid deadline=$((SECONDS + agentd_stop_timeout_seconds))
  for pid in "${agentd_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${agentd_pids[@]}"; do
    while running "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "agentd pid $pid ignored SIGTERM for ${agentd_stop_timeout_seconds}s, sending SIGKILL"
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
  if [ -n "$etcd_cluster_dir" ]; then
    "$repo/scripts/etcd-cluster.sh" stop "$etcd_cluster_dir" || true
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

# Runs a benchmark in the background and waits for it, so that a signal ends
# the wait at once and the EXIT trap can stop the benchmark and the cluster.
run_bench() {
  local output_file=$1
  shift
  "$@" >"$output_file" &
  bench_pid=$!
  wait "$bench_pid"
  bench_pid=""
}

# Reads a benchmark's stdout, checks that its last JSON line has the shared
# shape and the expected system, and appends that line to the results.
record_result() {
  local expected_system=$1 output_file=$2
  python3 - "$expected_system" "$output_file" >>"$results" <<'EOF'
import json, sys
expected, output = sys.argv[1], open(sys.argv[2]).read()
lines = [line for line in output.splitlines() if line.lstrip().startswith("{")]
if not lines:
    sys.exit(f"bench-vs-etcd: no JSON line in {expected} bench output: {output!r}")
result = json.loads(lines[-1])
fields = ["system", "clients", "events", "errors", "seconds", "events_per_sec",
          "p50_ms", "p99_ms", "p999_ms", "max_ms"]
missing = [field for field in fields if field not in result]
if missing or result["system"] != expected:
    sys.exit(f"bench-vs-etcd: unexpected {expected} result (missing {missing}): {lines[-1]}")
if result["errors"]:
    print(f"bench-vs-etcd: warning: {expected} with {result['clients']} clients had "
          f"{result['errors']} errors", file=sys.stderr)
print(json.dumps(result))
EOF
}

print_table() {
  python3 - "$results" "$(nproc)" "$value_bytes" <<'EOF'
import json, sys
path, cores, value_bytes = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(line) for line in open(path) if line.strip()]
print("| system | clients | events | p50 ms | p99 ms | p99.9 ms | events/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['system']} | {r['clients']} | {r['events']} | {r['p50_ms']:.2f} | "
          f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['events_per_sec']:.0f} |")
print()
print(f"3 nodes on loopback per system, fsync before ack, {value_bytes}-byte writes, "
      f"closed-loop clients; {cores} cores shared by nodes and clients.")
for r in rows:
    if r["errors"]:
        print(f"Note: {r['system']} with {r['clients']} clients: {r['errors']} of "
              f"{r['events']} writes failed (events/s counts acknowledged writes).")
EOF
}

# etcd's leader is whichever member won the first election. The bench talks
# to it directly, as agentd's bench talks to node 1, which bootstrapped its
# cluster; a follower would add a forwarding hop to every write.
etcd_leader_endpoint() {
  etcdctl --endpoints "http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793" \
    --command-timeout 5s endpoint status -w json | python3 -c '
import json, sys
members = json.load(sys.stdin)
leaders = [m["Endpoint"] for m in members if m["Status"]["header"]["member_id"] == m["Status"]["leader"]]
if len(leaders) != 1:
    sys.exit(f"bench-vs-etcd: expected one etcd leader, found {leaders}")
print(leaders[0])'
}

run_etcd() {
  local clients=$1 events=$2 leader
  local output_file="$work_dir/etcd-$clients-clients.out"
  etcd_cluster_dir="$work_dir/etcd-$clients-clients"
  # Every row starts from an empty cluster, even in a reused --work-dir.
  rm -rf "$etcd_cluster_dir"
  "$repo/scripts/etcd-cluster.sh" start "$etcd_cluster_dir"
  leader=$(etcd_leader_endpoint)
  log "etcd: $clients client(s), $events writes, leader $leader"
  run_bench "$output_file" "$etcd_bench" --endpoints "$leader" --clients "$clients" \
    --events "$events" --value-bytes "$value_bytes" --json
  record_result etcd "$output_file"
  "$repo/scripts/etcd-cluster.sh" stop "$etcd_cluster_dir"
  rm -rf "$etcd_cluster_dir"/etcd-{1,2,3}
  etcd_cluster_dir=""
}

check_agentd_alive() {
  local pid
  for pid in "${agentd_pids[@]}"; do
    running "$pid" || die "an agentd node exited during startup; see $1/n*.log"
  done
}

# Returns 0 once node 1 answers and reports all three nodes.
agentd_cluster_ready() {
  local status
  status=$("$agentd_bin" cluster status --addr 127.0.0.1:7101 --json 2>/dev/null) || return 1
  # Ready when every group (metadata and each shard) has three voters and a leader.
  python3 -c '
import json, sys
status = json.loads(sys.argv[1])
groups = status["groups"]
ready = len(status["nodes"]) == 3 and len(groups) == status["shards"] + 1 \
    and all(len(group["voters"]) == 3 and group["leader"] for group in groups)
sys.exit(0 if ready else 1)' "$status" 2>/dev/null
}

start_agentd() {
  local dir=$1 port node deadline=$((SECONDS + agentd_ready_timeout_seconds))
  for port in "${agentd_ports[@]}"; do
    ! ss -Hlntu "sport = :$port" | grep -q . || die "port $port is in use (an agentd still running?)"
  done
  rm -rf "$dir"
  mkdir -p "$dir"
  "$agentd_bin" start --node-id 1 --listen 127.0.0.1:7101 --data-dir "$dir/n1" --init \
    </dev/null >"$dir/n1.log" 2>&1 &
  agentd_pids+=("$!")
  until [ -s "$dir/n1/join-token" ] && [ -s "$dir/n1/admin-key" ]; do
    check_agentd_alive "$dir"
    [ "$SECONDS" -lt "$deadline" ] || die "no join token or admin key in $dir/n1 after ${agentd_ready_timeout_seconds}s"
    sleep 0.2
  done
  # Every request carries an API key; --init wrote the cluster's first (admin) key.
  AGENTD_API_KEY=$(cat "$dir/n1/admin-key")
  export AGENTD_API_KEY
  for node in 2 3; do
    "$agentd_bin" start --node-id "$node" --listen "127.0.0.1:710$node" --data-dir "$dir/n$node" \
      --join 127.0.0.1:7101 --token "$(cat "$dir/n1/join-token")" \
      </dev/null >"$dir/n$node.log" 2>&1 &
    agentd_pids+=("$!")
  done
  until agentd_cluster_ready; do
    check_agentd_alive "$dir"
    [ "$SECONDS" -lt "$deadline" ] || die "agentd cluster not ready after ${agentd_ready_timeout_seconds}s; see $dir/n*.log"
    sleep 0.2
  done
  log "agentd: 3 nodes ready (logs in $dir)"
}

run_agentd() {
  local clients=$1 events=$2
  local dir="$work_dir/agentd-$clients-clients"
  local output_file="$work_dir/agentd-$clients-clients.out"
  start_agentd "$dir"
  log "agentd: $clients client(s), $events writes"
  run_bench "$output_file" "$agentd_bin" bench append --addr 127.0.0.1:7101 \
    --clients "$clients" --events "$events" --json
  record_result agentd "$output_file"
  stop_agentd
  rm -rf "$dir"/n{1,2,3}
}

# Build everything before the first cluster starts, so that compiling never
# competes with a measurement.
log "building etcd-bench"
CARGO_TARGET_DIR="$etcd_bench_target_dir" cargo build --release --quiet \
  --manifest-path "$repo/tests/etcd-bench/Cargo.toml" >&2
etcd_bench="$etcd_bench_target_dir/release/etcd-bench"
if [ "$only_etcd" = false ] && [ -z "$agentd_bin" ]; then
  log "building agentd"
  # shellcheck source=scripts/env.sh
  agentd_bin=$(cd "$repo" && source scripts/env.sh && cargo build --release --quiet -p agentd >&2 \
    && echo "$CARGO_TARGET_DIR/release/agentd")
fi
if [ "$only_etcd" = false ]; then
  [ -x "$agentd_bin" ] || die "agentd binary not found at $agentd_bin"
fi

run_etcd 1 "$events_1"
run_etcd 64 "$events_64"
if [ "$only_etcd" = false ]; then
  run_agentd 1 "$events_1"
  run_agentd 64 "$events_64"
fi
print_table
