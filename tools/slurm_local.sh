#!/usr/bin/env bash
# A real Slurm cluster on this one machine (CI and laptops), so the sbatch scripts are tested
# by submitting jobs, not by reading them. Idempotent: installs slurm-wlm + munge when
# missing, writes a munge key and slurm.conf, and (re)starts munged, slurmctld and every
# slurmd that is not running (a changed node count restarts them all). Needs root.
#
#   bash tools/slurm_local.sh              # one node: this host (the default)
#   bash tools/slurm_local.sh --nodes 4    # four nodes echo-node1..4 on loopback addresses
#   sinfo -N; sbatch ...; squeue; scancel
#
# With --nodes N, each node is its own slurmd (Debian's slurm-wlm is built with
# MULTIPLE_SLURMD: `slurmd -N echo-nodeK`) with its own port, spool dir and log, and its own
# address 127.0.0.(10+K), named in /etc/hosts, so what runs "on" a node can bind to that
# node's address alone (pipeline/launch.py serves vLLM on the node's name). The nodes share
# this machine's CPUs; each declares them all and 1/N of the memory.
set -euo pipefail

nodes=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes=${2:-}; shift 2 || shift ;;
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "slurm_local.sh: unknown argument $1 (use --nodes N)" >&2; exit 2 ;;
    esac
done
case "$nodes" in ''|*[!0-9]*|0) echo "slurm_local.sh: --nodes wants a number ≥ 1, got '$nodes'" >&2; exit 2 ;; esac
[ "$nodes" -le 200 ] || { echo "slurm_local.sh: at most 200 nodes (127.0.0.11-210)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 85 / 100 / 1024 ))
conf=/etc/slurm/slurm.conf
host_addr=$(getent ahostsv4 "$host" | awk 'NR == 1 {print $1}')

# munge: the key and a running daemon (as user munge)
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
names=()
if [ "$nodes" -eq 1 ]; then
    names=("$host")
    node_lines="NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN"
    node_set=$host
    daemon_lines="SlurmdSpoolDir=/var/spool/slurmd
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdPidFile=/run/slurmd.pid"
else
    node_lines=""
    for k in $(seq "$nodes"); do
        name=echo-node$k
        names+=("$name")
        addr=127.0.0.$((10 + k))
        # the name resolves here (one line per node, rewritten if its address moved)
        if ! grep -qE "^${addr//./\\.}[[:space:]]+${name}\$" /etc/hosts; then
            grep -vE "[[:space:]]${name}\$" /etc/hosts > /tmp/hosts.echo || true
            printf '%s %s\n' "$addr" "$name" >> /tmp/hosts.echo
            cat /tmp/hosts.echo > /etc/hosts  # in place: /etc/hosts may be a bind mount
            rm -f /tmp/hosts.echo
        fi
        node_lines+="NodeName=${name} NodeHostname=${host} NodeAddr=${host_addr} Port=$((6820 + k)) CPUs=${cpus} RealMemory=$((mem_mb / nodes)) State=UNKNOWN"$'\n'
    done
    node_lines=${node_lines%$'\n'}
    node_set="echo-node[1-${nodes}]"
    daemon_lines="CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdTimeout=30"
fi
want=$(cat <<EOF
# written by tools/slurm_local.sh: ${nodes} node(s), one partition
ClusterName=echo-local
SlurmctldHost=${host}
${daemon_lines}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmctldPidFile=/run/slurmctld.pid
JobRequeue=1
MpiDefault=none
${node_lines}
PartitionName=cpu Nodes=${node_set} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
fresh=()
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    printf '%s\n' "$want" > "$conf"
    pkill -x slurmctld 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    for _ in $(seq 20); do { pgrep -x slurmctld || pgrep -x slurmd; } >/dev/null || break; sleep 0.5; done
    fresh=(-c)  # another set of nodes: the old cluster's jobs and node states go
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld "${fresh[@]}"
if [ "$nodes" -eq 1 ]; then
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
else
    for name in "${names[@]}"; do
        mkdir -p "/var/spool/slurmd/${name}"
        pgrep -f "^/usr/sbin/slurmd -N ${name}\$" >/dev/null || /usr/sbin/slurmd -N "$name"
    done
fi

up() { sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)/' | sort -u | wc -l; }
for _ in $(seq 60); do
    if [ "$(up)" -ge "$nodes" ]; then
        echo "slurm: ${nodes} node(s) up: ${names[*]} (${cpus} CPUs, $((mem_mb / nodes)) MB each)"
        exit 0
    fi
    for name in "${names[@]}"; do
        scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true
    done
    sleep 1
done
echo "slurm: $(up) of ${nodes} node(s) came up; see /var/log/slurm/*.log" >&2
sinfo -N >&2 || true
exit 1
