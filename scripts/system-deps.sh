#!/usr/bin/env bash
# Installs the Debian packages Picscale needs, only those missing.
# Usage: scripts/system-deps.sh run|test|lab|bench
# Runs `apt-get update` at most once, then `apt-get install -y`.
set -euo pipefail

case "${1:-test}" in
  run)   wanted=(ca-certificates) ;;
  # every engine of the lab (`picscale lab up --stage 8`); the tests run the lab
  lab)   wanted=(ca-certificates postgresql-15 patroni etcd-server redis-server rabbitmq-server
               varnish varnish-modules haproxy prometheus prometheus-node-exporter
               prometheus-postgres-exporter prometheus-redis-exporter
               prometheus-varnish-exporter) ;;
  test)  wanted=(ca-certificates chromium postgresql-15 patroni etcd-server redis-server rabbitmq-server
               varnish varnish-modules haproxy prometheus prometheus-node-exporter
               prometheus-postgres-exporter prometheus-redis-exporter
               prometheus-varnish-exporter) ;;
  bench) wanted=(ca-certificates wrk postgresql-15) ;;
  *) echo "usage: $0 run|test|lab|bench" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
  command -v sudo >/dev/null || { echo "need root to install: ${missing[*]} (run as root or install them)" >&2; exit 1; }
else
  sudo=
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
