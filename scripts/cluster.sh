#!/usr/bin/env bash
# A Spark standalone cluster on this machine: one master and two workers on 127.0.0.1, started from the
# pip-installed pyspark (which has bin/spark-class but no sbin/start-master.sh).
#
#   scripts/cluster.sh up      start the master and the workers; print the master URL
#   scripts/cluster.sh status  say which of the processes are running; exit 1 if any is not
#   scripts/cluster.sh down    stop exactly the processes `up` started (by pid, checked against
#                              their command line), and nothing else
#
# Everything lives under the run folder CLUSTER_DIR (default .cluster): master.url, a .pid and a .log
# per process, and the workers' work folders (executor logs). Settings, from the environment:
#   PYTHON        the Python whose pyspark to use (default .venv/bin/python, else python3)
#   MASTER_PORT   the master's port (default: a free one)
#   WORKERS       how many workers (default 2); WORKER_CORES (default 1), WORKER_MEMORY (default 1g)
# Submit to it with:  spark-submit --master "$(cat .cluster/master.url)" ...
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="$(mkdir -p "${CLUSTER_DIR:-.cluster}" && cd "${CLUSTER_DIR:-.cluster}" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="$REPO/.venv/bin/python"
  [[ -x "$PYTHON" ]] || PYTHON=python3
fi
WORKERS="${WORKERS:-2}"
WORKER_CORES="${WORKER_CORES:-1}"
WORKER_MEMORY="${WORKER_MEMORY:-1g}"
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker
START_TIMEOUT=90 # seconds for the master to listen and each worker to register

die() { echo "cluster.sh: $*" >&2; exit 1; }

spark_home() {
  "$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null \
    || die "no pyspark in $PYTHON: run make setup, or set PYTHON"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

names() { echo master; for i in $(seq 1 "$WORKERS"); do echo "worker-$i"; done; }

class_of() { [[ "$1" == master ]] && echo "$MASTER_CLASS" || echo "$WORKER_CLASS"; }

# The pid in <name>.pid if that process is still the one we started (the pid may have been reused).
running_pid() {
  local name="$1" pid command
  [[ -f "$CLUSTER_DIR/$name.pid" ]] || return 1
  pid="$(cat "$CLUSTER_DIR/$name.pid")"
  command="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null)" || return 1
  [[ "$command" == *"$(class_of "$name")"* ]] || return 1
  grep -q '^State:\s*Z' "/proc/$pid/status" && return 1
  echo "$pid"
}

# spark-class execs java, so $! is the JVM's own pid.
start() {
  local name="$1"; shift
  SPARK_HOME="$SPARK_HOME" SPARK_LOCAL_IP=127.0.0.1 SPARK_NO_DAEMONIZE=1 \
    nohup "$SPARK_HOME/bin/spark-class" "$@" > "$CLUSTER_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/$name.pid"
}

# Whether the process `start` just launched is still alive. Not running_pid: right after the fork, before
# nohup execs spark-class, the child's command line is still this script's, without the class name.
alive() {
  local pid
  pid="$(cat "$CLUSTER_DIR/$1.pid")"
  [[ -d "/proc/$pid" ]] && ! grep -q '^State:\s*Z' "/proc/$pid/status" 2>/dev/null
}

exited() {
  echo "cluster.sh: $1 exited; the end of $CLUSTER_DIR/$1.log:" >&2
  tail -n 20 "$CLUSTER_DIR/$1.log" >&2 || true
  exit 1
}

wait_for() {
  local name="$1" pattern="$2" waited=0
  until grep -q -- "$pattern" "$CLUSTER_DIR/$name.log" 2>/dev/null; do
    alive "$name" || exited "$name"
    (( waited++ < START_TIMEOUT )) || die "$name not ready after ${START_TIMEOUT}s; see $CLUSTER_DIR/$name.log"
    sleep 1
  done
}

up() {
  for name in $(names); do
    if running_pid "$name" > /dev/null; then die "$name is already running (pid $(running_pid "$name")); run down first"; fi
  done
  SPARK_HOME="$(spark_home)"
  local port="${MASTER_PORT:-$(free_port)}"
  local url="spark://127.0.0.1:$port"
  start master "$MASTER_CLASS" --host 127.0.0.1 --port "$port" --webui-port "$(free_port)"
  wait_for master "I have been elected leader"
  echo "$url" > "$CLUSTER_DIR/master.url"
  for i in $(seq 1 "$WORKERS"); do
    mkdir -p "$CLUSTER_DIR/work-$i"
    start "worker-$i" "$WORKER_CLASS" --host 127.0.0.1 --webui-port "$(free_port)" \
      --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$CLUSTER_DIR/work-$i" "$url"
  done
  for i in $(seq 1 "$WORKERS"); do wait_for "worker-$i" "Successfully registered with master"; done
  echo "$url"
}

status() {
  local missing=0 pid
  for name in $(names); do
    if pid="$(running_pid "$name")"; then
      echo "$name running (pid $pid)"
    else
      echo "$name not running"
      missing=1
    fi
  done
  [[ -f "$CLUSTER_DIR/master.url" ]] && echo "master url $(cat "$CLUSTER_DIR/master.url")"
  return "$missing"
}

down() {
  local pids=() pid name
  for name in $(names | tac); do  # workers first, then the master
    if pid="$(running_pid "$name")"; then
      kill -TERM "$pid"
      pids+=("$pid")
    fi
    rm -f "$CLUSTER_DIR/$name.pid"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 20); do [[ -d "/proc/$pid" ]] || break; sleep 0.5; done
    [[ -d "/proc/$pid" ]] && kill -KILL "$pid"
  done
  rm -f "$CLUSTER_DIR/master.url"
  echo "stopped ${#pids[@]} processes"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: scripts/cluster.sh up|status|down   (run folder: CLUSTER_DIR, default .cluster)" >&2; exit 2 ;;
esac
