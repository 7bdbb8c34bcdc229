#!/bin/sh
# Install the recorded sample material `stemsplit synth --samples` can use (optional): Debian
# packages of recorded drum kits, instrument samples, human voices and soundfonts. The generator
# works without them (procedural sound only).
#
#   sudo scripts/install_samples.sh          install system-wide (then use --samples auto)
#   scripts/install_samples.sh --unpack DIR  no root needed: download the packages and unpack
#                                            them under DIR (then use --samples DIR)
#
# Deliberately NOT installed, reserved for held-out evaluation: fluid-soundfont-gm, espeak-ng,
# lmms, lmms-common, pingus-data, klettres-data (stemsplit/synth/reserved.py refuses their files).
set -eu

PACKAGES="hydrogen-drumkits hydrogen-data sonic-pi-samples freepats ktuberling-data hedgewars-data
avldrums.lv2-soundfont timgm6mb-soundfont musescore-general-soundfont"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_samples.sh: apt-get not found (Debian/Ubuntu only); see the package list inside" >&2
    exit 1
fi

available=""
for pkg in $PACKAGES; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
        available="$available $pkg"
    else
        echo "install_samples.sh: $pkg is not in this distribution's package lists, skipped" >&2
    fi
done
if [ -z "$available" ]; then
    echo "install_samples.sh: none of the packages is available (run apt-get update?)" >&2
    exit 1
fi

if [ "${1:-}" = "--unpack" ]; then
    if [ -z "${2:-}" ]; then
        echo "usage: $0 --unpack DIR" >&2
        exit 2
    fi
    mkdir -p "$2"
    dest=$(cd "$2" && pwd)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # shellcheck disable=SC2086
    (cd "$work" && apt-get download $available)
    for deb in "$work"/*.deb; do
        dpkg-deb -x "$deb" "$dest"
    done
    echo "unpacked into $dest:$available"
    echo "use: stemsplit synth OUT --samples $dest"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO apt-get install -y --no-install-recommends fluidsynth libfluidsynth3 $available
echo "installed:$available"
echo "use: stemsplit synth OUT --samples auto"
