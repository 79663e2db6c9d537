#!/usr/bin/env bash
# Keeps the crate boundaries that ARCHITECTURE.md states true at link level:
# - the native client (agentd-client) links no storage engine, no Raft, no
#   actor runtime and no simulator;
# - the embeddable node (agentd-node) links no simulator;
# - the agent loop (agentd-actors) links no storage engine, no Raft, no QUIC;
# - the wire crates (agentd-protocol, agentd-transport) link none of them.
# Dependency edges of every kind count (normal, build and dev).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

failed=0
check() {
  local package=$1
  shift
  local found
  found=$(cargo tree --offline -p "$package" --edges normal,build,dev --prefix none --format '{p}' 2>/dev/null \
    | awk '{print $1}' | sort -u | grep -Fx -f <(printf '%s\n' "$@") || true)
  if [ -n "$found" ]; then
    echo "check-layers: $package must not depend on: $(echo "$found" | tr '\n' ' ')" >&2
    failed=1
  else
    echo "check-layers: $package links none of: $*"
  fi
}

check agentd-client rocksdb librocksdb-sys openraft ractor turmoil agentd-raft agentd-node agentd-actors agentd-sim
check agentd-node turmoil agentd-sim agentd-client
check agentd-actors rocksdb librocksdb-sys openraft quinn turmoil agentd-raft agentd-transport agentd-node agentd-sim
check agentd-transport rocksdb librocksdb-sys openraft ractor turmoil agentd-raft
check agentd-protocol rocksdb librocksdb-sys openraft ractor turmoil quinn tokio agentd-transport agentd-raft
exit "$failed"
