"""The deny-list of material reserved for held-out evaluation: the one place it lives.

Owns which Debian packages are reserved (never used for training, tuning or validation) and the
test of whether a file path belongs to one of them. Every finder of sound material (soundfonts,
sample libraries) asks `is_reserved` before listing a path. It must not scan folders itself.
"""
from __future__ import annotations

import os
from pathlib import PurePath

# Debian packages kept out of every training and validation set.
RESERVED_PACKAGES = ("fluid-soundfont-gm", "espeak-ng", "lmms", "lmms-common", "pingus-data", "klettres-data")

# Lower-case fragments of the paths those packages install (and of their usual copies): a path
# containing one is refused, wherever the package was unpacked.
RESERVED_PATH_PARTS = (
    "fluidr3",            # fluid-soundfont-gm: FluidR3_GM.sf2 / FluidR3_GS.sf2
    "fluid-soundfont",
    "espeak-ng",          # espeak-ng and espeak-ng-data voices
    "espeak",
    "/lmms",              # lmms, lmms-common: /usr/share/lmms samples and presets
    "lmms/",
    "pingus",             # pingus-data: /usr/share/games/pingus
    "klettres",           # klettres-data: spoken letters and syllables
)


def is_reserved(path: str | PurePath) -> bool:
    """True when `path` (file or folder), or what it links to, belongs to reserved evaluation
    material: an innocent name can be a link into a reserved package (Debian's default-GM.sf2)."""
    for name in (path, os.path.realpath(path)):
        text = "/" + PurePath(name).as_posix().lower()
        if any(part in text for part in RESERVED_PATH_PARTS):
            return True
    return False
