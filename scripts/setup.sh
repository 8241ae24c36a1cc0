#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian/Ubuntu machine (run as root or with sudo):
#   1. Debian packages: ARM cross compiler + newlib + libstdc++, QEMU, host g++;
#   2. .venv at the repo root with this project installed editable (pins in pyproject.toml);
#   3. PlatformIO's core package tool-scons, built from PyPI's scons, because PlatformIO's own
#      registry may be unreachable (it is in our CI) and `pio run` refuses to start without it.
# Re-running only checks what is already there. PLATFORMIO_CORE_DIR is respected.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$REPO_DIR/.venv"
APT_PACKAGES=(gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib
  qemu-system-arm g++)
# PlatformIO 6.2 asks for tool-scons ~4.41101.0, i.e. SCons 4.11.1 in its version encoding.
SCONS_VERSION="4.11.1"
SCONS_PIO_VERSION="4.41101.0"

log() { printf '[setup] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
  local missing=()
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  # python3 -m venv needs Debian's python3-venv only when python3 is Debian's own.
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages present: ${APT_PACKAGES[*]}"
    return
  fi
  log "apt-get install ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
}

create_venv() {
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    log "creating $VENV_DIR"
    python3 -m venv "$VENV_DIR"
  else
    log "venv present: $VENV_DIR"
  fi
  if [ ! -f "$REPO_DIR/pyproject.toml" ]; then
    log "no pyproject.toml yet: skipping 'pip install -e .'"
    return
  fi
  # pip's own "already satisfied" check makes a re-run cheap; the stamp skips even that when
  # pyproject.toml has not changed since the last successful install.
  local stamp="$VENV_DIR/.mcutrain-installed"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$REPO_DIR/pyproject.toml" ]; then
    log "project already installed in venv (pyproject.toml unchanged)"
    return
  fi
  log "pip install -e $REPO_DIR[dev]"
  # [dev]: TensorFlow, TFLite Micro (bit-exact reference), LiteRT, pytest and ruff: the tests'.
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO_DIR[dev]"
  touch "$stamp"
}

# PlatformIO runs `python <packages>/tool-scons/scons.py ...` with its own interpreter, and finds
# the package by the name/version in package.json plus the owner in .piopm's spec.
provision_tool_scons() {
  local core_dir="${PLATFORMIO_CORE_DIR:-$HOME/.platformio}"
  local pkg_dir="$core_dir/packages/tool-scons"
  # package.json and .piopm are written last, so their presence means a complete package (ours,
  # or the one PlatformIO fetched itself when its registry was reachable).
  if [ -f "$pkg_dir/.piopm" ] && [ -f "$pkg_dir/scons.py" ] \
    && grep -q "\"$SCONS_PIO_VERSION\"" "$pkg_dir/package.json" 2>/dev/null; then
    log "tool-scons $SCONS_PIO_VERSION present: $pkg_dir"
    return
  fi
  log "provisioning tool-scons $SCONS_PIO_VERSION from PyPI scons==$SCONS_VERSION into $pkg_dir"
  rm -rf "$pkg_dir"
  mkdir -p "$pkg_dir"
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    --target "$pkg_dir" "scons==$SCONS_VERSION"
  cat > "$pkg_dir/scons.py" <<'EOF'
# Entry point PlatformIO runs: SCons is installed beside this file (pip --target).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from SCons.Script import main  # noqa: E402

if __name__ == "__main__":
    main()
EOF
  cat > "$pkg_dir/package.json" <<EOF
{
  "name": "tool-scons",
  "version": "$SCONS_PIO_VERSION",
  "description": "SCons $SCONS_VERSION from PyPI, provisioned by scripts/setup.sh",
  "keywords": ["build tool"],
  "license": "MIT",
  "system": "*"
}
EOF
  cat > "$pkg_dir/.piopm" <<EOF
{"type": "tool", "name": "tool-scons", "version": "$SCONS_PIO_VERSION", "spec": {"owner": "platformio", "id": null, "name": "tool-scons", "requirements": null, "uri": null}}
EOF
}

check_platformio() {
  if [ -x "$VENV_DIR/bin/pio" ]; then
    log "$("$VENV_DIR/bin/pio" --version)"
  else
    log "note: PlatformIO not in the venv yet (it comes from pyproject.toml)"
  fi
}

install_apt_packages
create_venv
provision_tool_scons
check_platformio
log "done"
