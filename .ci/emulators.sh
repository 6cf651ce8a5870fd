#!/usr/bin/env bash
# Fetches qemu-user 10 (Debian 13's static qemu-x86_64 and qemu-aarch64) into .emulation/qemu, without
# touching the system's apt setup: tests/test_kernels.py runs onnxruntime under an emulated AVX2 CPU
# (`qemu-x86_64 -cpu Haswell-noTSX`) to check the int16-saturating kernel class bit for bit.
# Debian 12's qemu-user 7.2 segfaults importing onnxruntime 1.32 (shared/notes/cpu-classes.md).
# Cached: a second run does nothing. Fails loudly (non-zero, one line on stderr) when a download fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${MBEDGE_EMULATION_DIR:-$PWD/.emulation}"
QEMU="$ROOT/qemu"
if [ -x "$QEMU/usr/bin/qemu-x86_64" ] && [ -x "$QEMU/usr/bin/qemu-aarch64" ]; then
  exit 0
fi
APT="$ROOT/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$QEMU"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$APT/trixie.list"
opts=(-q -o "Dir::Etc::SourceList=$APT/trixie.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)
if ! apt-get "${opts[@]}" update >"$APT/update.log" 2>&1; then
  echo "emulators: apt-get update for Debian trixie failed (see $APT/update.log)" >&2
  exit 1
fi
if ! (cd "$APT" && apt-get "${opts[@]}" download qemu-user >"$APT/download.log" 2>&1); then
  echo "emulators: downloading Debian trixie's qemu-user failed (see $APT/download.log)" >&2
  exit 1
fi
dpkg -x "$APT"/qemu-user_*.deb "$QEMU.tmp"
mkdir -p "$QEMU/usr/bin"
for arch in x86_64 aarch64; do
  mv "$QEMU.tmp/usr/bin/qemu-$arch" "$QEMU/usr/bin/"
done
rm -rf "$QEMU.tmp" "$APT"/qemu-user_*.deb
"$QEMU/usr/bin/qemu-x86_64" --version | head -1
