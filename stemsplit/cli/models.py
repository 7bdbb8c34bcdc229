"""`stemsplit models`: list, inspect, download and locate the catalog's models.

It must not download or look files up itself: the models package does.
"""
from __future__ import annotations

from typing import Optional

import typer

from stemsplit.cli.app import app
from stemsplit.cli.common import _download_bars, _fail
from stemsplit.constants import DEFAULT_MODEL

_MODELS_ACTIONS = ("list", "info", "download", "path")


def _size_text(size: Optional[int]) -> str:
    return "?" if size is None else f"{size / 1e6:.0f} MB"


def _models_list(as_json: bool) -> None:
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from stemsplit.models.registry import list_models

    infos = list_models()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(info) for info in infos], indent=2))
        return
    table = Table(title="stemsplit models")
    for column in ("name", "sources", "size", "cached", "SDR (dB)", "description"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(
            (f"{info.name} [bold](default{'' if info.cached else ', downloaded on first use'})[/bold]"
             if info.default else info.name),
            ", ".join(info.sources),
            _size_text(info.size_bytes),
            "[green]yes[/green]" if info.cached else "no",
            "-" if info.sdr is None else f"{info.sdr:.1f}",
            info.description,
        )
    default = next((info for info in infos if info.default), None)
    if default is not None:  # what `stemsplit song.mp3` would use right now, and why
        table.caption = f"default: {default.name} ({default.default_reason})"
        table.caption_justify = "left"
    Console().print(table)


def _models_info(name: str, as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from stemsplit.models import registry

    if name == DEFAULT_MODEL:
        path = registry.default_model_path()
        info = {"name": name, "default": True, "path": None if path is None else str(path), "cached": path is not None}
        files: list = []
    else:
        entry = registry.get_entry(name)
        files = [
            {"file": file.name, "url": file.url(), "sha256": file.sha256, "size_bytes": file.size,
             "cached_path": str(registry.cached_path(file)), "cached": registry.cached_path(file).is_file()}
            for file in entry.files
        ]
        info = {
            "name": entry.name, "default": False, "description": entry.description, "sources": list(entry.sources),
            "size_bytes": entry.size_bytes, "sdr": entry.sdr, "segment": entry.segment,
            "weights": None if entry.weights is None else [list(row) for row in entry.weights],
            "cached": registry.is_cached(entry), "files": files,
        }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console = Console()
    for key, value in info.items():
        if key != "files":
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False, soft_wrap=True)
    if files:
        table = Table(title="files")
        for column in ("file", "size", "sha256", "cached", "url"):
            table.add_column(column, overflow="fold")
        for file in files:
            table.add_row(file["file"], _size_text(file["size_bytes"]), file["sha256"],
                          "[green]yes[/green]" if file["cached"] else "no", file["url"])
        console.print(table)


def _models_download(name: str, as_json: bool) -> None:
    import json

    from stemsplit.models.download import download_model

    with _download_bars(True, transient=as_json) as report:
        paths = download_model(name, progress=report)
    if as_json:
        typer.echo(json.dumps([str(path) for path in paths], indent=2))
    else:
        for path in paths:
            typer.echo(str(path))


def _models_path(name: Optional[str], as_json: bool) -> None:
    import json

    from stemsplit.models import registry

    if name is None:
        paths = [str(registry.cache_dir())]
    elif name == DEFAULT_MODEL:
        paths = [str(registry.require_default_path())]
    else:
        paths = [str(registry.cached_path(file)) for file in registry.get_entry(name).files]
    typer.echo(json.dumps(paths if name else paths[0]) if as_json else "\n".join(paths))


@app.command("models")
def models(
    action: str = typer.Argument(
        "list", metavar="[list|info|download|path]",
        help="list: all models; info NAME: details and files; download NAME: fetch into the cache; "
             "path [NAME]: the cache folder, or where NAME's files live.",
    ),
    name: Optional[str] = typer.Argument(None, help="Model name, for info, download and path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List, inspect and download the pretrained models."""
    from stemsplit.errors import StemsplitError

    if action not in _MODELS_ACTIONS:
        raise _fail(f"unknown action {action!r}; use one of {', '.join(_MODELS_ACTIONS)}", 2)
    if action in ("info", "download") and name is None:
        raise _fail(f"`stemsplit models {action}` needs a model name (see `stemsplit models list`)", 2)
    if action == "list" and name is not None:
        raise _fail("`stemsplit models list` takes no model name", 2)
    try:
        if action == "list":
            _models_list(as_json)
        elif action == "info":
            _models_info(name, as_json)  # type: ignore[arg-type]
        elif action == "download":
            _models_download(name, as_json)  # type: ignore[arg-type]
        else:
            _models_path(name, as_json)
    except StemsplitError as exc:
        if as_json:  # a script reading stdout gets a document whatever happened
            import json

            typer.echo(json.dumps({"error": str(exc)}, indent=2))
        raise _fail(exc, 1) from None
