#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (and, with 'bench', the benchmarks), only when missing.
# With 'venv': only python3-venv, which `make setup` needs to create .venv.
set -euo pipefail

install() {
  [ $# -gt 0 ] || return 0
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need=()
# Debian's python3 creates no venv until python3-venv brings ensurepip (`-m venv --help` alone passes without it)
py="${PY:-python3}"
{ "$py" -m venv --help && "$py" -c 'import ensurepip'; } >/dev/null 2>&1 || need+=(python3-venv)
if [ "${1:-}" = "venv" ]; then install ${need[@]+"${need[@]}"}; exit 0; fi
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
# the monitoring test scrapes a live server with a real Prometheus
command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || need+=(prometheus)
# the dashboard test opens /dashboard in a real headless browser
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# the scale-out tests: replicas in network namespaces (iproute2) behind HAProxy
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v ip >/dev/null || need+=(iproute2)
# benchmarks only: the wrk load generator for serve_bench
if [ "${1:-}" = "bench" ]; then command -v wrk >/dev/null || need+=(wrk); fi
install ${need[@]+"${need[@]}"}
