#!/usr/bin/env bash
# Side by side: the same append workload on a fresh 3-node cluster with leader
# balance off and on (`agentd start --balance-leaders false|true`), alternating,
# so that both see the same machine. The bench talks to node 1, as
# scripts/bench-vs-etcd.sh does; with balance on, two thirds of the shards are
# led elsewhere and node 1 forwards those appends one hop.
#
#   scripts/bench-leader-balance.sh [--rounds N] [--clients C] [--events N]
#                                   [--agentd-bin PATH] [--dir DIR]
#
#   --rounds N      off/on pairs (default 2)
#   --clients C     concurrent clients of the many-client row (default 64)
#   --events N      appends of the many-client row (default 20000; the
#                   1-client row does N/10)
#   --agentd-bin P  the agentd binary (default: the release build of this clone)
#   --dir DIR       where the data directories go (default /tmp; /dev/shm
#                   takes the disk out of the comparison)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=2 clients=64 events=20000 agentd_bin="" base_dir=/tmp
ports=(7401 7402 7403)

log() { echo "bench-leader-balance: $*" >&2; }
die() { log "error: $*"; exit 1; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?}; shift 2 ;;
    --clients) clients=${2:?}; shift 2 ;;
    --events) events=${2:?}; shift 2 ;;
    --agentd-bin) agentd_bin=${2:?}; shift 2 ;;
    --dir) base_dir=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
if [ -z "$agentd_bin" ]; then
  # shellcheck source=scripts/env.sh
  source "$repo/scripts/env.sh"
  log "building the release binary"
  (cd "$repo" && cargo build --release -p agentd >&2)
  agentd_bin="$CARGO_TARGET_DIR/release/agentd"
fi

pids=()
stop_nodes() {
  [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}
trap stop_nodes EXIT

one_round() {
  local balance=$1 dir
  dir=$(mktemp -d -p "$base_dir" bench-balance.XXXXXX)
  "$agentd_bin" start --node-id 1 --listen "127.0.0.1:${ports[0]}" --data-dir "$dir/n1" --init \
    --balance-leaders "$balance" </dev/null >"$dir/n1.log" 2>&1 &
  pids+=("$!")
  local deadline=$((SECONDS + 60))
  until [ -s "$dir/n1/join-token" ] && [ -s "$dir/n1/admin-key" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "node 1 did not start; see $dir/n1.log"
    sleep 0.2
  done
  AGENTD_API_KEY=$(cat "$dir/n1/admin-key")
  export AGENTD_API_KEY
  for node in 2 3; do
    "$agentd_bin" start --node-id "$node" --listen "127.0.0.1:${ports[$((node - 1))]}" --data-dir "$dir/n$node" \
      --join "127.0.0.1:${ports[0]}" --token "$(cat "$dir/n1/join-token")" --balance-leaders "$balance" \
      </dev/null >"$dir/n$node.log" 2>&1 &
    pids+=("$!")
  done
  # Joins, replication and (with balance on) the hand-offs settle first.
  sleep 25
  local leads
  leads=$("$agentd_bin" cluster status --addr "127.0.0.1:${ports[0]}" --json |
    python3 -c '
import collections, json, sys
leads = collections.Counter(group["leader"] for group in json.load(sys.stdin)["groups"])
print(" ".join("n%s:%d" % (node, count) for node, count in sorted(leads.items(), key=str)))')
  for row in "1 $((events / 10))" "$clients $events"; do
    set -- $row
    local result
    result=$("$agentd_bin" bench append --addr "127.0.0.1:${ports[0]}" --clients "$1" --events "$2" 2>/dev/null)
    echo "| $balance | $leads | $result |"
  done
  stop_nodes
  rm -rf "$dir"
}

echo "| balance | leaders per node | result |"
echo "|---|---|---|"
for _ in $(seq "$rounds"); do
  one_round false
  one_round true
done
