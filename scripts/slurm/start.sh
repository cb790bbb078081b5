#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests: munged + slurmctld + slurmd, all state in
# one directory. Usage: scripts/slurm/start.sh DIR   (then: export SLURM_CONF=DIR/slurm.conf)
#   Stop it with scripts/slurm/stop.sh DIR. Needs root and Debian's slurm-wlm + munge packages.
# No cgroups (containers rarely allow them): processes are tracked through their parent pids
# (proctrack/linuxproc) and not bound to cores (task/none). The node gets this machine's CPUs
# and memory, as `slurmd -C` reports them. Ports: SLURMCTLD_PORT / SLURMD_PORT (free ones by
# default), so that a second cluster or a system one does not collide.
set -euo pipefail
dir=$(realpath -m "${1:?usage: $0 STATE_DIR}")
for exe in munged mungekey slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null || { echo "error: $exe not found; apt-get install -y slurm-wlm munge" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (slurmd starts jobs as their user)" >&2; exit 3; }
mkdir -p "$dir"/{munge,state,spool}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port=${SLURMCTLD_PORT:-$(free_port)}
slurmd_port=${SLURMD_PORT:-$(free_port)}
node=$(hostname -s)
# "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105": keep CPUs and RealMemory only (the
# socket/core split of a VM is not worth matching)
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")

# munge: our own key and socket, so a system munged (if any) is left alone
mungekey --create --keyfile="$dir/munge/munge.key" --force 2>/dev/null \
    || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
chmod 600 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"

cat > "$dir/slurm.conf" <<CONF
# written by scripts/slurm/start.sh
ClusterName=metarl
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# scancel, preemption and time limits send SIGTERM, then SIGKILL KillWait seconds later: the
# time a run has to finish its meta-iteration and write last.ckpt (clusters often use 30 s)
KillWait=60
MinJobAge=600
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i       # -i: ignore state left by an earlier cluster in DIR
slurmd -f "$SLURM_CONF" -N "$node"
for _ in $(seq 60); do               # up when the node is idle (ReturnToService=2)
    if [ "$(sinfo -h -n "$node" -o %t 2>/dev/null)" = idle ]; then
        echo "SLURM up: SLURM_CONF=$SLURM_CONF, node $node ($cpus CPUs, $mem MB), partition debug"
        exit 0
    fi
    sleep 0.5
done
echo "error: node $node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
