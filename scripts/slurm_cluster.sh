#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `hydra/launcher=slurm` and for the tests
# (pytest -k slurm). Needs root and Debian/Ubuntu's packages:
#     apt-get install -y slurm-wlm munge
#     sudo scripts/slurm_cluster.sh start     # munged + slurmctld + slurmd; waits until the node is idle
#     sudo scripts/slurm_cluster.sh status
#     sudo scripts/slurm_cluster.sh stop
# The node is this machine: its hostname, its CPU count and memory as `slurmd -C` reports them, one
# partition `local`, no accounting database, no cgroups (proctrack/linuxproc), CPUs as the consumable
# resource (memory is not reserved, only checked against the node's). Both `start` and `stop` are
# idempotent: `start` on a running cluster that answers changes nothing.
# Files: /etc/slurm/slurm.conf (where sbatch/srun/squeue look for it; an existing one that this script
# did not write is never replaced) and $SLURM_CLUSTER_DIR (default /var/lib/peephole-slurm): state,
# spool, pid and log files. Jobs run as the user who submits them.
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/var/lib/peephole-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# Written by peephole-lstm scripts/slurm_cluster.sh"
PARTITION=local

die() { echo "slurm_cluster: $*" >&2; exit 1; }
say() { echo "slurm_cluster: $*"; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

need_root() {
    [[ $(id -u) == 0 ]] || die "must run as root (the SLURM daemons start jobs as their users): sudo $0 $1"
}

need_packages() {
    local missing=()
    for bin in munged slurmctld slurmd sbatch; do
        command -v "$bin" >/dev/null || [[ -x /usr/sbin/$bin ]] || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) || die "${missing[*]} not found: apt-get install -y slurm-wlm munge"
}

cluster_up() {
    # The controller answers and this node is usable (idle, mixed or allocated; not down or drained).
    local state
    state=$(sinfo --noheader --partition="$PARTITION" --format=%T 2>/dev/null | head -n1) || return 1
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already running (ours or the system's)
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid 9>&-  # (9: the lock, see lock())
    ln -sf /run/munge/munged.pid "$DIR/munged.pid"  # marks munged as started by this script, for `stop`
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

render_conf() {  # the config for this machine, on stdout
    local node host cpus mem
    host=$(hostname -s)
    # slurmd's own view of this machine, e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
    node=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $cpus && -n $mem ]] || die "cannot read CPUs and RealMemory from 'slurmd -C': $node"
    cat <<EOF
$MARKER for a one-node development cluster.
ClusterName=peephole-local
# The daemons talk over loopback, so a hostname that does not resolve still works.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=15
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
MpiDefault=none
# No cgroups: works in containers and on laptops without cgroup delegation.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct has nothing to show (the launcher reads job states from squeue instead).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 5 minutes.
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

write_conf() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not replacing it (move it away to use this one)"
    fi
    mkdir -p "$(dirname "$CONF")"
    render_conf >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    say "$CONF: $(grep '^NodeName=' "$CONF")"
}

start() {
    need_root start
    need_packages
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && cluster_up; then
        if [[ $(render_conf) == "$(cat "$CONF" 2>/dev/null)" ]]; then
            say "already running ($(sinfo --noheader --format='%P %D node %c CPUs %T'))"
            return
        fi
        say "running with another config: restarting it"
        stop_daemon "$DIR/slurmd.pid" slurmd
        stop_daemon "$DIR/slurmctld.pid" slurmctld
    fi
    mkdir -p "$DIR/state" "$DIR/spool"
    start_munge
    if ! alive "$DIR/slurmctld.pid"; then
        write_conf
        # -c: a fresh cluster, without the jobs of an earlier one
        slurmctld -c -i 9>&-
    fi
    alive "$DIR/slurmd.pid" || slurmd -c 9>&-
    local host
    host=$(hostname -s)
    for i in $(seq 120); do
        cluster_up && break
        # A node that came up before the controller knew it may be marked down: return it to service.
        if ((i % 10 == 0)); then
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    if ! cluster_up; then
        echo "--- slurmctld.log" >&2; tail -n 20 "$DIR/slurmctld.log" >&2 || true
        echo "--- slurmd.log" >&2; tail -n 20 "$DIR/slurmd.log" >&2 || true
        die "the node did not become idle within 60 s ($(sinfo --noheader -N -o '%N %T %E' 2>&1 | head -n1))"
    fi
    getent hosts "$host" >/dev/null ||
        say "warning: hostname $host does not resolve; multi-process jobs (DDP) need it in /etc/hosts"
    say "running ($(sinfo --noheader --format='%P %D node %c CPUs %T'))"
}

stop_daemon() {  # pid file, name
    local pid
    alive "$1" || return 0
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $2"; return 0; }
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    say "killed $2 (it did not stop within 10 s)"
}

stop() {
    need_root stop
    # Jobs still running would be orphaned: cancel them first (the controller kills their processes).
    if alive "$DIR/slurmctld.pid" && [[ -n $(squeue --noheader --format=%i 2>/dev/null) ]]; then
        scancel --full --partition="$PARTITION" 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(squeue --noheader --format=%i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_daemon "$DIR/slurmd.pid" slurmd
    stop_daemon "$DIR/slurmctld.pid" slurmctld
    # Only a munged that `start` launched (a system munged may serve other things).
    if [[ -L $DIR/munged.pid ]]; then
        stop_daemon "$DIR/munged.pid" munged
        rm -f "$DIR/munged.pid"
    fi
}

status() {
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && cluster_up; then
        sinfo
        return 0
    fi
    say "not running"
    return 1
}

lock() {  # one start/stop at a time (two test sessions may both find the cluster down)
    # The daemons are started with fd 9 closed: a daemon that inherited it would hold the lock for its
    # whole life, and every later start or stop (CI's exit trap) would wait for it forever.
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock 9
}

case ${1:-} in
    start) need_root start; lock; start ;;
    stop) need_root stop; lock; stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
