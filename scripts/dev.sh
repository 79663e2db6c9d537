#!/usr/bin/env bash
# The main job: builds agentd and runs `agentd dev` — a local 3-node cluster
# (in one process, data under .agentd/dev) running a sample agent session
# whose tool calls run in bubblewrap sandboxes; its events print as they
# commit. Extra arguments go to `agentd dev` (e.g. --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "==> building agentd" >&2
cargo build -p agentd --quiet
exec "$CARGO_TARGET_DIR/debug/agentd" dev "$@"
