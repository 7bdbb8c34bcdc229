#!/bin/sh
# Install what the synthetic song generator needs for sample-based rendering (optional):
# libfluidsynth (used in-process through ctypes) and General MIDI soundfonts from Debian/Ubuntu.
# The generator works without them (procedural instruments only).
#
# Deliberately NOT installed: fluid-soundfont-gm and espeak-ng. They are reserved for held-out
# evaluation, so that a model trained on this generator is tested on sounds it never heard.
#
# Usage: sudo scripts/install_soundfonts.sh        (or as root)
set -eu

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_soundfonts.sh: apt-get not found; install libfluidsynth and a GM .sf2 by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    fluidsynth libfluidsynth3 timgm6mb-soundfont musescore-general-soundfont
echo "installed soundfonts:"
ls -l /usr/share/sounds/sf2 /usr/share/sounds/sf3 2>/dev/null || true
