"""Data sets on disk (MUSDB-style folders) shared by training and evaluation."""
