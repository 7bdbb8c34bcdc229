"""Recorded sample material for the song generator: drum kits, human voices and soundfonts.

library.py finds the material under a root folder and splits it into train/valid; audio.py reads
audio files with hard bounds; hydrogen.py plays Hydrogen drum kits (sonicpi.py and sf2kit.py
arrange Sonic Pi one-shots and drum-only soundfonts as such kits); voices.py sings melodies with
recorded words. Everything here is optional: the generator falls back to procedural sound when no
sample package is installed. Submodules are imported by their users, not here, so that importing
this package costs nothing.
"""
