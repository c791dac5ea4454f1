# Sourced by perf/peer_env.sh and perf/calculon_env.sh: ensure_venv VENV STAMP_NAME REQ...
# creates (once) a virtual environment at VENV with the requirements from PyPI, marks it
# with VENV/.shardflow-STAMP_NAME, and prints its python on stdout. Never the system Python.
ensure_venv() {
  local venv=$1 stamp="$1/.shardflow-$2"
  shift 2
  if [[ ! -f "$stamp" ]]; then
    echo "$(basename "$0"): creating $venv with $* from PyPI (first use)" >&2
    python3 -m venv "$venv" >&2 || {
      # Debian's python3 without python3-venv: install it (root) and retry.
      if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2
        python3 -m venv "$venv" >&2
      else
        echo "$(basename "$0"): python3 -m venv failed; install python3-venv" >&2
        return 1
      fi
    }
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q "$@" >&2
    touch "$stamp"
  fi
  echo "$venv/bin/python"
}
