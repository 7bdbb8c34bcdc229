"""Torch-free constants shared by the command line and the library.

Owns the names and values that several modules (and `stemsplit --help`) need: file extensions,
output formats, MP3 rates, the default output template and its fields, clip modes, precisions,
the embedded model's name and the preferred default's. The CLI imports them from here so that its help needs no torch.
It must not import anything heavier than the standard library.
"""
from __future__ import annotations

SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".w64", ".caf"}
)
FFMPEG_EXTENSIONS = frozenset(
    {".m4a", ".aac", ".alac", ".wma", ".webm", ".weba", ".mka", ".mp4", ".m4v", ".mkv", ".mov", ".avi"}
)
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

OUTPUT_FORMATS = ("wav", "flac", "mp3")
BIT_DEPTHS = (16, 24, 32)
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_SAMPLERATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # MPEG-1, 2 and 2.5

DEFAULT_TEMPLATE = "{model}/{track}/{stem}.{ext}"
TEMPLATE_FIELDS = ("model", "track", "stem", "ext", "dir")

CLIP_MODES = ("rescale", "clamp", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the hardware runs it natively and it holds quality

DEFAULT_MODEL = "stemsplit_default"  # the embedded model's catalog name
PREFERRED_MODEL = "htdemucs"  # what no model name means when it is cached or can be downloaded
