# shellcheck shell=bash
# Sourced by loopback_slurm.sh and loopback_sshd.sh: stop only what they started (docs/cluster.md).

# stop_started PIDFILE PATTERN: stop the process whose PID PIDFILE holds, if its command line still
# contains PATTERN (a recycled PID is left alone); TERM, then KILL after 10 s; then remove PIDFILE.
stop_started() {
  local pidfile=$1 pattern=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$pattern"; then
    kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq 100); do
      [[ -e /proc/$pid ]] || break
      sleep 0.1
    done
    [[ -e /proc/$pid ]] && kill -KILL "$pid" 2> /dev/null
  fi
  rm -f "$pidfile"
}
