#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine, on 127.0.0.1 only: munged, slurmctld and two slurmd ("n1",
# "n2", each on its own port). Everything it writes (config, state, spool, logs, PID files) lives in DIR, but
# munged's socket and log: the munge user must reach them, so they get a folder of their own in /tmp.
#
#   launch/cluster/loopback_slurm.sh up DIR     # start; prints the SLURM_CONF line to export
#   export SLURM_CONF=DIR/slurm.conf            # then sbatch / srun / sinfo talk to this cluster
#   launch/cluster/loopback_slurm.sh down DIR   # cancel its jobs, stop what `up` started (by PID)
#
# Needs root and the Debian packages slurmctld slurmd slurm-client munge. `up` adds the line
# "127.0.0.1 n1 n2 # admin-ds loopback cluster" to /etc/hosts (job scripts resolve the node names) and `down`
# removes exactly that line. Nothing is ever stopped by name. Ports: SLURM_PORT_BASE [17000] for slurmctld,
# +1 and +2 for the two slurmd. docs/cluster.md has the details.
set -euo pipefail

HOSTS_LINE="127.0.0.1 n1 n2 # admin-ds loopback cluster"
NODES=(n1 n2)

die() { echo "loopback_slurm.sh: $*" >&2; exit 2; }
# shellcheck source=launch/cluster/pids.sh
source "$(dirname "${BASH_SOURCE[0]}")/pids.sh"

write_config() {
  local dir=$1 base=$2 munge=$3 host
  host=$(hostname -s)
  cat > "$dir/slurm.conf" <<EOF
ClusterName=loopback
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
# Bind every daemon and srun to the address its name resolves to (127.0.0.1), not to all interfaces.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# Keep finished jobs' records (scontrol show job answers for them), which also makes sbatch --wait look every
# 2 s instead of after 2, 10, 42, 74... s.
MinJobAge=0
KillWait=5
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + 1)) CPUs=2 RealMemory=1000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + 2)) CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

# Start COMMAND... in the background, detached from this shell, and record its PID in DIR/run/NAME.pid.
start_daemon() {
  local dir=$1 name=$2; shift 2
  setsid "$@" < /dev/null > "$dir/log/$name.out" 2>&1 &
  echo "$!" > "$dir/run/$name.pid"
}

# munged, as the munge user, with its socket, log and seed in a fresh folder under /tmp (DIR may sit below
# folders the munge user cannot enter); its path goes to DIR/run/munge.dir.
start_munge() {
  local dir=$1 key=/etc/munge/munge.key munge
  munge=$(mktemp -d /tmp/admin-ds-munge.XXXXXX)
  echo "$munge" > "$dir/run/munge.dir"
  chown munge:munge "$munge"; chmod 0755 "$munge"
  if [[ ! -r $key ]]; then
    key=$munge/munge.key
    head -c 1024 /dev/urandom > "$key"
    chown munge:munge "$key"; chmod 0400 "$key"
  fi
  start_daemon "$dir" munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
    --socket="$munge/munge.socket" --key-file="$key" --log-file="$munge/munged.log" \
    --pid-file="$munge/munged.pid" --seed-file="$munge/munged.seed"
  for _ in $(seq 50); do
    [[ -S $munge/munge.socket ]] && return 0
    sleep 0.1
  done
  die "munged did not start: see $dir/log/munged.out and $munge/munged.log"
}

add_hosts_line() {
  local hosts
  grep -qxF "$HOSTS_LINE" /etc/hosts && return 0
  hosts=$(cat /etc/hosts)
  # /etc/hosts may be a bind mount: rewrite it in place, never replace the file.
  printf '%s\n%s\n' "$hosts" "$HOSTS_LINE" > /etc/hosts
}

remove_hosts_line() {
  local hosts
  grep -qxF "$HOSTS_LINE" /etc/hosts || return 0
  hosts=$(grep -vxF "$HOSTS_LINE" /etc/hosts || true)
  printf '%s\n' "$hosts" > /etc/hosts
}

# Die unless NAME resolves to a loopback address: the daemons and srun listen on what the names resolve to.
require_loopback() {
  local name=$1 addr
  addr=$(getent hosts "$name" | awk '{print $1; exit}')
  [[ $addr == 127.* || $addr == ::1 ]] && return 0
  [[ $name == n[12] ]] && remove_hosts_line
  die "$name resolves to ${addr:-nothing}, not to a loopback address (see /etc/hosts); refusing to start"
}

wait_for_idle_nodes() {
  local dir=$1 state
  for _ in $(seq 150); do
    state=$(SLURM_CONF=$dir/slurm.conf sinfo -h -N -o '%N %t' 2>/dev/null | sort | tr '\n' ' ')
    [[ $state == "n1 idle n2 idle " ]] && return 0
    sleep 0.2
  done
  die "nodes not idle after 30 s (sinfo: ${state:-no answer}); logs in $dir/log"
}

up() {
  local dir=$1 base=${SLURM_PORT_BASE:-17000} node
  (( EUID == 0 )) || die "needs root (it starts munged as the munge user and slurmd as root)"
  for tool in munged slurmctld slurmd sbatch setpriv; do
    command -v "$tool" > /dev/null || die "$tool not found: apt-get install slurmctld slurmd slurm-client munge"
  done
  [[ -e $dir/run/slurmctld.pid ]] && die "$dir already holds a cluster (run down first)"
  mkdir -p "$dir"/{state,log,run} "${NODES[@]/#/$dir/spool/}"
  dir=$(cd "$dir" && pwd)
  require_loopback "$(hostname)"
  require_loopback "$(hostname -s)"
  add_hosts_line
  for node in "${NODES[@]}"; do require_loopback "$node"; done
  start_munge "$dir"
  write_config "$dir" "$base" "$(cat "$dir/run/munge.dir")"
  start_daemon "$dir" slurmctld slurmctld -D -i -f "$dir/slurm.conf"
  for node in "${NODES[@]}"; do
    start_daemon "$dir" "slurmd-$node" slurmd -D -N "$node" -f "$dir/slurm.conf"
  done
  wait_for_idle_nodes "$dir"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

down() {
  local dir=$1 node munge
  [[ -d $dir ]] || die "no such cluster folder: $dir"
  dir=$(cd "$dir" && pwd)
  if [[ -f $dir/run/slurmctld.pid ]]; then
    # Job steps run under slurmstepd, which outlives slurmd: cancel the jobs first and let them end.
    export SLURM_CONF=$dir/slurm.conf
    scancel --full --quiet --user=root 2> /dev/null || true
    for _ in $(seq 100); do
      [[ -z $(squeue -h -o %i 2> /dev/null) ]] && break
      sleep 0.2
    done
  fi
  # Each takes seconds to shut down: stop the three at once.
  for node in "${NODES[@]}"; do stop_started "$dir/run/slurmd-$node.pid" slurmd & done
  stop_started "$dir/run/slurmctld.pid" slurmctld &
  wait
  stop_started "$dir/run/munged.pid" munged
  if [[ -f $dir/run/munge.dir ]]; then
    munge=$(cat "$dir/run/munge.dir")
    [[ $munge == /tmp/admin-ds-munge.* ]] && rm -rf -- "$munge"
    rm -f "$dir/run/munge.dir"
  fi
  remove_hosts_line
}

case "${1:-}" in
  up) [[ $# -eq 2 ]] || die "usage: $0 up DIR"; up "$2" ;;
  down) [[ $# -eq 2 ]] || die "usage: $0 down DIR"; down "$2" ;;
  *) die "usage: $0 up|down DIR" ;;
esac
