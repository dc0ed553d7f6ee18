#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and CI (DESIGN.md "Scale").
#
#   .ci/slurm.sh up       install slurm-wlm + munge if missing, write slurm.conf, start
#                         munged, slurmctld, slurmd; wait until the node is idle
#   .ci/slurm.sh down     stop slurmd, slurmctld, munged
#   .ci/slurm.sh restart  down, then up
#   .ci/slurm.sh status   daemons and sinfo
#
# Idempotent: `up` reuses daemons that already run with the same slurm.conf, and restarts
# the SLURM daemons when the config it would write differs from the installed one.
# No systemd: the daemons are started directly (slurmctld/slurmd fork into the background).
# Environment: SLURM_UP_TIMEOUT (seconds to wait for an idle node, default 90),
#              SLURM_PARTITION (default debug).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
PARTITION=${SLURM_PARTITION:-debug}
UP_TIMEOUT=${SLURM_UP_TIMEOUT:-90}
HOST=$(hostname -s)

step() { printf '[slurm.sh] %s\n' "$*"; }
die() { printf '[slurm.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# pid of a running daemon: from its pid file if that process is alive, else by exact name.
daemon_pid() {  # name pidfile
    local pid=""
    if [[ -s $2 ]]; then
        pid=$(<"$2")
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
            && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]; then
            echo "$pid"; return 0
        fi
    fi
    pid=$(pgrep -x "$1" | head -n1 || true)
    [[ -n $pid ]] && echo "$pid"
    return 0
}

stop_daemon() {  # name pidfile
    local pid
    pid=$(daemon_pid "$1" "$2")
    if [[ -z $pid ]]; then
        step "$1: not running"
        return 0
    fi
    step "$1: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        step "$1: still alive after 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$2"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    for b in slurmctld slurmd sinfo sbatch squeue scontrol; do
        command -v "$b" >/dev/null || { missing+=(slurm-wlm); break; }
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        step "packages: slurm-wlm and munge already installed ($(slurmctld -V 2>/dev/null || echo '?'))"
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "installing ${missing[*]} needs root"
    step "packages: installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # No daemon may start from a package's postinst: we start them ourselves below.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1
    fi
    local log=/tmp/slurm-apt.log rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Use-Pty=0 slurm-wlm munge; } >"$log" 2>&1 || rc=$?
    [[ $made_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || { tail -n 30 "$log" >&2; die "apt-get failed (rc $rc, full log $log)"; }
    step "packages: installed $(slurmctld -V)"
}

render_conf() {
    local cpus mem_mb real_mem
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # A bit below the machine's memory: slurmd drains a node whose configured
    # RealMemory exceeds what it finds.
    real_mem=$(( mem_mb * 95 / 100 ))
    cat <<EOF
# Single-node SLURM test cluster: written by .ci/slurm.sh (do not edit by hand).
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (no systemd, containers): plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# No slurmdbd: sacct cannot answer; Snakemake polls with squeue instead, which sees a
# finished job for MinJobAge seconds (the SLURM plugin wants >= 3x its first poll delay).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        step "munge: creating key $MUNGE_KEY"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 "$MUNGE_KEY"
    local pid
    pid=$(daemon_pid munged "$MUNGE_PID")
    if [[ -n $pid ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        step "munge: munged already running (pid $pid), credentials round-trip"
        return 0
    fi
    if [[ -n $pid ]]; then
        step "munge: munged pid $pid does not answer, restarting it"
        stop_daemon munged "$MUNGE_PID"
    fi
    step "munge: starting munged as user munge"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
    step "munge: munged running (pid $(daemon_pid munged "$MUNGE_PID"))"
}

# Node state as sinfo prints it; a suffix flags trouble ("idle*": slurmd not responding).
node_state() {
    sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true
}

wait_idle() {
    local start=$SECONDS state="" resumed=0
    while (( SECONDS - start < UP_TIMEOUT )); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing)
                step "node $HOST is $state after $(( SECONDS - start )) s"
                return 0 ;;
            down* | drain* | fail* | inval*)
                if [[ $resumed -eq 0 ]]; then
                    step "node $HOST is $state: scontrol update state=resume"
                    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
                    resumed=1
                fi ;;
        esac
        sleep 1
    done
    sinfo -N -l >&2 || true
    scontrol show node "$HOST" >&2 || true
    echo "--- tail $LOG_DIR/slurmctld.log" >&2; tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
    echo "--- tail $LOG_DIR/slurmd.log" >&2; tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
    die "node $HOST not idle after ${UP_TIMEOUT} s (last state: '${state:-none}')"
}

cmd_up() {
    install_packages
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
    local new_conf changed=0
    new_conf=$(render_conf)
    if [[ -f $CONF ]] && [[ "$(cat "$CONF")" == "$new_conf" ]]; then
        step "config: $CONF unchanged (node $HOST)"
    else
        printf '%s\n' "$new_conf" >"$CONF"
        changed=1
        step "config: wrote $CONF (node $HOST, CPUs=$(nproc), $(grep -o 'RealMemory=[0-9]*' "$CONF"), partition $PARTITION)"
    fi
    start_munge
    local ctld slurmd
    ctld=$(daemon_pid slurmctld "$CTLD_PID")
    slurmd=$(daemon_pid slurmd "$SLURMD_PID")
    if [[ $changed -eq 1 ]] && [[ -n $ctld || -n $slurmd ]]; then
        step "config changed: restarting running SLURM daemons"
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
        ctld="" slurmd=""
    fi
    if [[ -n $ctld ]] && ! scontrol ping 2>/dev/null | grep -q UP; then
        step "slurmctld pid $ctld does not answer scontrol ping: restarting it"
        stop_daemon slurmctld "$CTLD_PID"
        ctld=""
    fi
    if [[ -n $ctld ]]; then
        step "slurmctld: already running (pid $ctld)"
    else
        step "slurmctld: starting"
        slurmctld -i || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
        for _ in $(seq 1 50); do
            scontrol ping 2>/dev/null | grep -q UP && break
            sleep 0.2
        done
        scontrol ping 2>/dev/null | grep -q UP \
            || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
        step "slurmctld: running (pid $(daemon_pid slurmctld "$CTLD_PID"))"
    fi
    if [[ -n $slurmd ]]; then
        step "slurmd: already running (pid $slurmd)"
    else
        step "slurmd: starting"
        slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
        for _ in $(seq 1 50); do [[ -s $SLURMD_PID ]] && break; sleep 0.1; done
        step "slurmd: running (pid $(daemon_pid slurmd "$SLURMD_PID"))"
    fi
    step "waiting up to ${UP_TIMEOUT} s for node $HOST to be idle"
    wait_idle
    sinfo
}

cmd_down() {
    if ! command -v slurmctld >/dev/null; then
        step "slurm is not installed: nothing to stop"
        return 0
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    step "down"
}

cmd_status() {
    command -v sinfo >/dev/null || die "slurm is not installed (run: .ci/slurm.sh up)"
    local n p
    for n in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        p=$(daemon_pid "${n%%:*}" "${n#*:}")
        if [[ -n $p ]]; then step "${n%%:*}: running (pid $p)"; else step "${n%%:*}: not running"; fi
    done
    sinfo
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    restart) cmd_down; cmd_up ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|restart|status" >&2; exit 2 ;;
esac
