#!/usr/bin/env bash
# Download Python wheels for the lent GPU machine into .whl/ (bench/README.md, "On a lent GPU").
#
#   bench/gpu_wheels.sh [--dest DIR] [NAME==VERSION ...]
#
# The device cannot reach a package registry; a package missing from its image travels as a wheel
# in .whl/ (carried with the call; gpu_check.sh installs every .whl/*.whl into /tmp/site first).
# Its Python is 3.12 on x86-64 (KINDS.md), so wheels are fetched for that, whatever runs here,
# with the device README's exact `pip download` command, one package at a time and without its
# dependencies: the script prints each wheel's Requires-Dist so that missing ones can be named too.
#
# With no package named it downloads nothing: every module bench/gpu_check.sh imports (torch,
# numpy, pandas, pyarrow, scikit-learn, rich, pytest, pytest-timeout) is in the device image.
# torch, triton and nvidia-* are refused: they are in the image already, and gigabytes.
set -euo pipefail

die() { echo "gpu_wheels.sh: $*" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=$REPO/.whl
SPECS=()
while (($#)); do
  case "$1" in
    --dest) (($# >= 2)) || die "--dest needs a folder"; DEST=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1'" ;;
    *) SPECS+=("$1") ;;
  esac
  shift
done

if ((${#SPECS[@]} == 0)); then
  echo "bench/gpu_check.sh needs no wheels: torch, numpy, pandas, pyarrow, scikit-learn, rich,"
  echo "pytest and pytest-timeout are in the device image (KINDS.md). Name NAME==VERSION to fetch others."
  exit 0
fi

seen=" "
for spec in "${SPECS[@]}"; do
  [[ $spec =~ ^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$ ]] ||
    die "'$spec': name an exact version, NAME==VERSION (two versions of one package stop the install there)"
  name=$(echo "${BASH_REMATCH[1]}" | tr 'A-Z_.' 'a-z--')
  case $name in
    torch | triton | nvidia-*) die "'$spec': already on the device (KINDS.md) and gigabytes; do not carry it" ;;
  esac
  [[ $seen != *" $name "* ]] || die "'$name' named twice"
  seen+="$name "
done

mkdir -p "$DEST"
if [[ $DEST == "$REPO/.whl" ]] && ! git -C "$REPO" check-ignore -q .whl/probe.whl; then
  echo "/.whl/" >>"$(git -C "$REPO" rev-parse --git-path info/exclude)" # never commit wheels
fi

PIP=(${PYTHON:-python3} -m pip download --no-deps --only-binary=:all: --python-version 3.12
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
  -d "$DEST")
for spec in "${SPECS[@]}"; do
  echo "--- $spec"
  if ! "${PIP[@]}" "$spec"; then
    echo "no manylinux_2_17..2_28 wheel for $spec: add '--platform manylinux_2_N_x86_64' (N = 24, 31, 34, 35 ...) to PIP in $0" >&2
    exit 1
  fi
done

echo
echo "wheels in $DEST and what each needs (skip 'extra ==' lines; check the rest are on the device):"
for whl in "$DEST"/*.whl; do
  echo "  $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)"
  unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /' || true
done
total=$(du -sk "$DEST" | cut -f1)
echo "total $((total / 1024)) MiB: the working tree plus carried paths must stay under 64 MiB a call"
((total < 48 * 1024)) || echo "WARNING: over 48 MiB of wheels leaves little room for the tree" >&2
