#!/usr/bin/env bash
# Makes sure `uv` is available; prints its path. Uses pip (installing Debian's
# python3-pip first when there is no pip at all).
set -euo pipefail
find_uv() { command -v uv 2>/dev/null || { [ -x "$HOME/.local/bin/uv" ] && echo "$HOME/.local/bin/uv"; }; }
if uv_path=$(find_uv); then echo "$uv_path"; exit 0; fi
python=${PYTHON:-python3}
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "installing Debian's python3-pip to get uv" >&2
  sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >&2 && $sudo apt-get install -y -q python3-pip >&2
fi
echo "installing uv with pip" >&2
"$python" -m pip install --quiet --user uv >&2 \
  || "$python" -m pip install --quiet --user --break-system-packages uv >&2 \
  || "$python" -m pip install --quiet uv >&2
hash -r
find_uv || { echo "uv was installed but is not on PATH: add ~/.local/bin to PATH" >&2; exit 1; }
