#!/usr/bin/env bash
# Starts or stops a 3-member etcd cluster on loopback, the baseline for scripts/bench-vs-etcd.sh.
#
#   scripts/etcd-cluster.sh start DIR   # members 1-3: client ports 23791-23793, peer ports 23801-23803
#   scripts/etcd-cluster.sh stop DIR
#
# Data lives in DIR/etcd-N, logs in DIR/etcd-N.log, PIDs in DIR/etcd-N.pid.
# Durability is etcd's default: every member fsyncs its WAL before a write is
# acknowledged. No flag here may weaken that (no --unsafe-no-fsync), or the
# comparison with agentd's fsync-before-ack log means nothing.
set -euo pipefail

members=(1 2 3)
health_timeout_seconds=30
stop_timeout_seconds=15

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

client_url() { echo "http://127.0.0.1:$((23790 + $1))"; }
peer_url() { echo "http://127.0.0.1:$((23800 + $1))"; }

all_client_urls() {
  local urls=()
  for member in "${members[@]}"; do urls+=("$(client_url "$member")"); done
  (IFS=,; echo "${urls[*]}")
}

# True while the process exists and is not a zombie. The members are
# reparented to PID 1 once this script exits, and a zombie may wait there for
# a while before it is reaped; it has stopped all the same.
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != "Z" ]
}

# Prints the PID recorded for a member if that process is still an etcd, so
# that a stale PID file never makes us signal an unrelated process.
live_pid() {
  local pid_file="$dir/etcd-$1.pid" pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "etcd" ] || return 1
  echo "$pid"
}

# Members stop one at a time: a leader that gets SIGTERM hands leadership to
# a live peer first, and with all three stopping at once that hand-over waits
# for a peer that is itself shutting down until it times out (7 s).
stop_cluster() {
  local stopped=0 pid member deadline
  for member in "${members[@]}"; do
    pid=$(live_pid "$member") || continue
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + stop_timeout_seconds))
    while running "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "etcd-cluster: member $member (pid $pid) ignored SIGTERM for ${stop_timeout_seconds}s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
    stopped=$((stopped + 1))
  done
  for member in "${members[@]}"; do rm -f "$dir/etcd-$member.pid"; done
  echo "etcd-cluster: stopped $stopped member(s) in $dir" >&2
}

start_cluster() {
  local member
  for member in "${members[@]}"; do
    if live_pid "$member" >/dev/null; then
      echo "etcd-cluster: member $member is already running in $dir; run '$0 stop $dir' first" >&2
      exit 1
    fi
  done
  local initial_cluster=() port
  for member in "${members[@]}"; do initial_cluster+=("etcd-$member=$(peer_url "$member")"); done
  for port in 23791 23792 23793 23801 23802 23803; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      echo "etcd-cluster: port $port is already in use (another cluster running?)" >&2
      exit 1
    fi
  done

  mkdir -p "$dir"
  for member in "${members[@]}"; do
    # setsid: the members outlive this script and do not get its terminal's signals.
    setsid etcd \
      --name "etcd-$member" \
      --data-dir "$dir/etcd-$member" \
      --listen-client-urls "$(client_url "$member")" \
      --advertise-client-urls "$(client_url "$member")" \
      --listen-peer-urls "$(peer_url "$member")" \
      --initial-advertise-peer-urls "$(peer_url "$member")" \
      --initial-cluster "$(IFS=,; echo "${initial_cluster[*]}")" \
      --initial-cluster-token "etcd-bench" \
      --initial-cluster-state new \
      --logger zap --log-outputs stderr \
      </dev/null >"$dir/etcd-$member.log" 2>&1 &
    echo "$!" >"$dir/etcd-$member.pid"
  done

  local endpoints deadline=$((SECONDS + health_timeout_seconds))
  endpoints=$(all_client_urls)
  until etcdctl --endpoints "$endpoints" --command-timeout 2s endpoint health >/dev/null 2>&1; do
    for member in "${members[@]}"; do
      if ! live_pid "$member" >/dev/null; then
        echo "etcd-cluster: member $member exited during startup; last log lines:" >&2
        tail -n 20 "$dir/etcd-$member.log" >&2
        stop_cluster
        exit 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "etcd-cluster: not all members healthy after ${health_timeout_seconds}s; logs in $dir/etcd-N.log" >&2
      etcdctl --endpoints "$endpoints" --command-timeout 2s endpoint health >&2 || true
      stop_cluster
      exit 1
    fi
    sleep 0.2
  done
  echo "etcd-cluster: 3 members healthy at $endpoints (data and logs in $dir)" >&2
}

[ "$#" -eq 2 ] || usage
command=$1
dir=$2
case "$command" in
  start) start_cluster ;;
  stop) stop_cluster ;;
  *) usage ;;
esac
