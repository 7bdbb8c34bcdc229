"""The command line: parse, call the API, report. Nothing else lives here.

`app` is the Typer group (cli/app.py); each command registers itself from its own module, imported
here so that `stemsplit.cli:main` sees them all. No module of this package imports torch at import
time, so `stemsplit --help` stays instant.
"""
from stemsplit.cli import evaluate, models, separate, synth, train
from stemsplit.cli.app import app, main

COMMANDS = (separate, models, synth, train, evaluate)  # importing each module registered its command

__all__ = ["app", "main"]
