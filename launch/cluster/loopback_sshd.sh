#!/usr/bin/env bash
# An sshd on 127.0.0.1 only, for trying the deepspeed hostfile launcher (pdsh over ssh) on one machine.
# Its host key, the client key it accepts, its config, PID file and log all live in DIR; nothing under
# ~/.ssh or /etc/ssh is touched.
#
#   launch/cluster/loopback_sshd.sh up DIR [PORT]   # PORT [2222]; prints the variables to export
#   launch/cluster/loopback_sshd.sh down DIR        # stops the sshd it started (by PID)
#
# Needs root and the Debian packages openssh-server and pdsh. The printed PDSH_SSH_ARGS_APPEND points pdsh's
# ssh at DIR's key, known_hosts and port; pass --no_ssh_check to deepspeed (its own check runs a plain ssh
# that knows neither). docs/cluster.md has a full example.
set -euo pipefail

die() { echo "loopback_sshd.sh: $*" >&2; exit 2; }
# shellcheck source=launch/cluster/pids.sh
source "$(dirname "${BASH_SOURCE[0]}")/pids.sh"

up() {
  local dir=$1 port=$2 sshd=/usr/sbin/sshd key
  (( EUID == 0 )) || die "needs root (sshd logs in as root with DIR's key)"
  [[ -x $sshd ]] || die "$sshd not found: apt-get install openssh-server pdsh"
  command -v pdsh > /dev/null || die "pdsh not found: apt-get install pdsh"
  [[ -e $dir/sshd.pid.started ]] && die "$dir already holds an sshd (run down first)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  ssh-keygen -q -t ed25519 -N '' -C loopback-host -f "$dir/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C loopback-client -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  key=$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")
  printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$port" "$key" "$port" "$key" > "$dir/known_hosts"
  cat > "$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# DIR sits in a world-writable /tmp, which strict mode would refuse for the key files.
StrictModes no
EOF
  # sshd refuses to start without its privilege separation folder.
  install -d -m 0755 /run/sshd
  setsid "$sshd" -D -e -f "$dir/sshd_config" < /dev/null > "$dir/sshd.log" 2>&1 &
  echo "$!" > "$dir/sshd.pid.started"
  for _ in $(seq 50); do
    if ssh -i "$dir/id_ed25519" -p "$port" -o BatchMode=yes -o UserKnownHostsFile="$dir/known_hosts" \
         -o StrictHostKeyChecking=yes 127.0.0.1 true 2> /dev/null; then
      echo "export PDSH_SSH_ARGS_APPEND='-i $dir/id_ed25519 -p $port -o BatchMode=yes" \
           "-o UserKnownHostsFile=$dir/known_hosts -o StrictHostKeyChecking=yes'"
      return 0
    fi
    sleep 0.2
  done
  die "sshd did not accept the key within 10 s: see $dir/sshd.log"
}

down() {
  # Only the listener we started, and only while that PID is still an sshd with our config.
  stop_started "$1/sshd.pid.started" "$1/sshd_config"
}

case "${1:-}" in
  up) [[ $# -ge 2 && $# -le 3 ]] || die "usage: $0 up DIR [PORT]"; up "$2" "${3:-2222}" ;;
  down) [[ $# -eq 2 ]] || die "usage: $0 down DIR"; down "$2" ;;
  *) die "usage: $0 up DIR [PORT] | down DIR" ;;
esac
