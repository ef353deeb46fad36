#!/usr/bin/env bash
# One-time setup for nibble on Debian 12: installs the LLVM/MLIR 22 toolchain and the HIP headers
# when they are missing. Safe to run again; it does nothing when everything is present.
set -euo pipefail

PKGS=(
  llvm-22-dev libmlir-22-dev mlir-22-tools lld-22 clang-22 libpolly-22-dev
  libzstd-dev libz3-dev libxml2-dev zlib1g-dev libffi-dev libedit-dev libncurses-dev
  libamdhip64-dev
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: toolchain present (LLVM/MLIR 22, lld, HIP headers)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
