#!/usr/bin/env bash
# Stop the cluster scripts/slurm/start.sh DIR started: cancel its jobs, then stop slurmd,
# slurmctld and munged by the pids in DIR (nothing else is touched). Safe to run twice.
set -uo pipefail
dir=$(realpath -m "${1:?usage: $0 STATE_DIR}")
if [ -f "$dir/slurm.conf" ] && command -v scancel >/dev/null; then
    SLURM_CONF="$dir/slurm.conf" scancel --full --user="$(id -un)" 2>/dev/null
fi
stop() {  # stop the daemon whose pid is in file $1: SIGTERM, then SIGKILL after 10 s
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$1"
}
stop "$dir/slurmd.pid"
stop "$dir/slurmctld.pid"
stop "$dir/munge/munged.pid"
exit 0
