#!/usr/bin/env bash
# Everything rankstream needs on a Debian/Ubuntu machine, idempotent: system packages (redis-server,
# a JDK and Maven for the local Kafka, docker-compose to validate the compose file), a virtualenv
# in .venv, and the package with its model-building and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v promtool >/dev/null || need+=(prometheus)  # promtool checks deploy/monitoring/alerts.yml
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python3 -c 'import sys; assert sys.version_info >= (3, 11), "rankstream needs Python 3.11 or newer"'
[ -x .venv/bin/python ] || python3 -m venv .venv
# Re-install only when pyproject.toml changed since the last successful install.
stamp=.venv/.rankstream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[compression,dev]"
  touch "$stamp"
fi
