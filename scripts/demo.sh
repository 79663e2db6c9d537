#!/usr/bin/env bash
# Starts a 3-node agentd cluster on loopback with the embedded defaults,
# runs a session end to end (create, send, follow), SIGKILLs the leader,
# keeps the session going on the survivors, restarts the node, and shows
# that every replica holds the same log. Stops the cluster on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

echo "==> building agentd (release)" >&2
cargo build --release -p agentd --quiet
agentd="$CARGO_TARGET_DIR/release/agentd"
dir="${AGENTD_DEMO_DIR:-$(mktemp -d /tmp/agentd-demo.XXXXXX)}"
ports=(7101 7102 7103)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "==> cluster stopped; data and logs in $dir" >&2
}
trap cleanup EXIT

start_node() { # id, extra args...
  local id=$1; shift
  "$agentd" start --node-id "$id" --listen "127.0.0.1:${ports[$((id-1))]}" --data-dir "$dir/n$id" "$@" >>"$dir/n$id.log" 2>&1 &
  pids[$((id-1))]=$!
}

echo "==> starting node 1 (--init) in $dir" >&2
start_node 1 --init
for _ in $(seq 1 100); do [ -s "$dir/n1/join-token" ] && [ -s "$dir/n1/admin-key" ] && break; sleep 0.2; done
token=$(cat "$dir/n1/join-token")
# Every request carries an API key; --init wrote the cluster's first (admin) key.
export AGENTD_API_KEY
AGENTD_API_KEY=$(cat "$dir/n1/admin-key")
echo "==> starting nodes 2 and 3 (--join)" >&2
start_node 2 --join 127.0.0.1:7101 --token "$token"
start_node 3 --join 127.0.0.1:7101 --token "$token"

addrs=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
echo "==> waiting for every shard to have 3 replicas" >&2
for attempt in $(seq 1 240); do
  if "$agentd" cluster status --addr "$addrs" --json 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
groups = status["groups"]
ok = len(groups) == status["shards"] + 1 and all(len(g["voters"]) == 3 for g in groups)
sys.exit(0 if ok else 1)'; then break; fi
  [ "$attempt" = 240 ] && { echo "cluster did not converge; see $dir/*.log" >&2; exit 1; }
  sleep 0.5
done
"$agentd" cluster status --addr 127.0.0.1:7101 | head -8

session=$("$agentd" session create --addr "$addrs")
echo "==> session $session" >&2
"$agentd" session events --addr "$addrs" "$session" --follow &
follower=$!
pids+=("$follower")
for text in "hello, cluster" "what is the weather on the moon?"; do
  seq=$("$agentd" session send --addr "$addrs" "$session" --text "$text")
  echo "==> appended seq $seq" >&2
done

leader=$("$agentd" cluster status --addr "$addrs" --json | python3 -c '
import json, sys
from collections import Counter
groups = json.load(sys.stdin)["groups"]
print(Counter(g["leader"] for g in groups if g["leader"]).most_common(1)[0][0])')
echo "==> SIGKILL node $leader (it leads the most shards)" >&2
kill -9 "${pids[$((leader-1))]}"
for text in "still there after losing a node?" "one more"; do
  seq=$("$agentd" session send --addr "$addrs" "$session" --text "$text")
  echo "==> appended seq $seq with node $leader down" >&2
done
echo "==> restarting node $leader" >&2
start_node "$leader"
sleep 3
for id in 1 2 3; do
  count=$("$agentd" session events --addr "127.0.0.1:${ports[$((id-1))]}" "$session" --local | wc -l)
  echo "==> node $id replica holds $count events" >&2
done
kill "$follower" 2>/dev/null || true
echo "==> done" >&2
