"""The sample library index: recorded drum kits, voices and soundfonts below a root folder.

Owns where the Debian sample packages put their files (relative to a root: "/" when installed,
or a folder where the packages were unpacked with scripts/install_samples.sh --unpack), the
train/valid split of that material (the ONE place that rule lives) and refusing reserved
material (through reserved.py). It must not read or render audio.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from stemsplit.errors import DataError
from stemsplit.synth.reserved import is_reserved

SPLITS = ("train", "valid")

# Material only the validation split uses; training sees everything else. Kits are named by their
# folder, voices as "<family>/<folder>", soundfonts by their file name without suffix.
VALID = {
    "kit": frozenset({"BJA_Pacific", "ElectricEmpireKit"}),
    "voice": frozenset({"ktuberling/el", "ktuberling/uk", "hedgewars/British", "hedgewars/Surfer"}),
    "soundfont": frozenset({"TimGM6mb"}),
}

KIT_DIRS = ("usr/share/hydrogen/data/drumkits",)
# (family, folder holding one sub-folder of recordings per speaker or language)
VOICE_DIRS = (("ktuberling", "usr/share/ktuberling/sounds"),
              ("ktuberling", "usr/share/kde4/apps/ktuberling/sounds"),
              ("hedgewars", "usr/share/games/hedgewars/Data/Sounds/voices"))
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aif", ".aiff")
MAX_LISTED = 2000  # entries looked at per folder: a huge or hostile folder cannot stall the index


@dataclass(frozen=True)
class Kit:
    """A recorded drum kit: a Hydrogen drumkit.xml, a Sonic Pi kit ("sonic-pi/<kit>") in a folder,
    or a drum-only soundfont ("sf2/<file stem>", e.g. avldrums' Black Pearl)."""

    name: str
    path: Path


@dataclass(frozen=True)
class Voice:
    """One speaker's recordings (a language of ktuberling, a voice pack of hedgewars)."""

    name: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Library:
    """The material of one split found below `root` (sorted, so choices are reproducible)."""

    root: Path
    split: str
    kits: tuple[Kit, ...]
    voices: tuple[Voice, ...]
    soundfonts: tuple[Path, ...]   # General MIDI .sf2/.sf3 files and freepats folders

    def summary(self) -> str:
        return (f"{len(self.kits)} drum kits, {len(self.voices)} voices, {len(self.soundfonts)} soundfonts "
                f"({self.split} split of {self.root})")


def split_of(kind: str, name: str) -> str:
    """"valid" for material the validation split owns, else "train"."""
    return "valid" if name in VALID[kind] else "train"


def resolve_root(samples: str | Path) -> Path:
    """The root folder of `samples`: "auto" is the installed system ("/"), else a folder."""
    if str(samples) == "auto":
        return Path("/")
    root = Path(samples)
    if not root.is_dir():
        raise DataError(f"{root}: sample folder not found")
    return root


def listing(folder: Path) -> list[Path]:
    """The sorted entries of a folder (at most MAX_LISTED), reserved ones left out."""
    try:
        entries = []
        for i, entry in enumerate(folder.iterdir()):
            if i >= MAX_LISTED:
                break
            if not is_reserved(entry):
                entries.append(entry)
        return sorted(entries)
    except OSError:
        return []


def _kits(root: Path, split: str) -> list[Kit]:
    from stemsplit.synth.samples import sonicpi
    from stemsplit.synth.soundfont import find_soundfonts_under

    found = []
    for rel in KIT_DIRS:
        for kit_dir in listing(root / rel):
            xml = kit_dir / "drumkit.xml"
            if xml.is_file() and split_of("kit", kit_dir.name) == split:
                found.append(Kit(kit_dir.name, xml))
    folder = root / sonicpi.FOLDER
    if folder.is_dir() and not is_reserved(folder):
        found += [Kit(f"sonic-pi/{k}", folder) for k in sonicpi.KITS if split_of("kit", f"sonic-pi/{k}") == split]
    found += [Kit(f"sf2/{p.stem}", p) for p in find_soundfonts_under(root, drum_only=True)
              if split_of("kit", f"sf2/{p.stem}") == split]
    return found


def _voices(root: Path, split: str) -> list[Voice]:
    found = []
    for family, rel in VOICE_DIRS:
        for speaker in listing(root / rel):
            name = f"{family}/{speaker.name}"
            if not speaker.is_dir() or split_of("voice", name) != split:
                continue
            files = tuple(p for p in listing(speaker) if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if files:
                found.append(Voice(name, files))
    return found


@functools.lru_cache(maxsize=16)
def _find(root: Path, split: str) -> Library:
    from stemsplit.synth.patches import find_patch_sets_under
    from stemsplit.synth.soundfont import find_soundfonts_under

    fonts = [p for p in find_soundfonts_under(root) + find_patch_sets_under(root)
             if split_of("soundfont", p.stem) == split]
    return Library(root, split, tuple(_kits(root, split)), tuple(_voices(root, split)), tuple(fonts))


def find_library(samples: str | Path, split: str = "train") -> Library:
    """The material of `split` under `samples` ("auto" or a folder); empty when nothing is there.

    Cached per process (a training run renders many songs from one index). Reserved material is
    never listed, whatever the root.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = resolve_root(samples)
    if is_reserved(root):
        raise DataError(f"{root}: this folder holds reserved evaluation material")
    return _find(root, split)
