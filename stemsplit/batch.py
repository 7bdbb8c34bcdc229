"""Many inputs -> stem files under one output folder, named by a template.

Owns the batch around `pipeline.separate_file`: checking the output name template, expanding
files, folders and glob patterns into tracks, rendering each stem's path, refusing a track whose
outputs would overwrite an earlier track's, skipping tracks whose outputs all exist (unless asked
to overwrite), and one record per track (ok, skipped or failed, with its outputs, duration and time
taken). A failing track never stops the batch: its error is recorded and the next track runs.
Progress goes to a callback as `BatchEvent`s. The planning (`BatchPlan`) and the per-track
contract (`run_track`) are shared with every other runner of a batch (`batch_ray`'s actors).

It must not print, parse command-line options or choose exit codes (the cli package does), nor know how
one track is decoded, separated or encoded (pipeline.py does).
"""
from __future__ import annotations

import glob
import os
import string
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Literal, Optional, Sequence, Union

from stemsplit.constants import AUDIO_EXTENSIONS, DEFAULT_MODEL, DEFAULT_TEMPLATE, TEMPLATE_FIELDS
from stemsplit.errors import AudioError, StemsplitError, TemplateError
from stemsplit.engine.separator import Separator
from stemsplit.pipeline import OutputOptions, output_stems, separate_file

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Track:
    """One input of a batch: an audio file to separate, or the reason the input named none.

    `input` is what the user gave (or the file found in a folder or by a pattern); it names the
    track in records and messages.
    """

    input: str
    path: Optional[Path] = None
    error: Optional[str] = None
    relative: str = ""  # the file's path relative to the folder it was found in (its shard key)
    folder: str = ""  # the `{dir}` field: the file's folder relative to that folder ("" for a file given as is)
    name: str = ""  # the `{track}` field when it is not the file's stem (`stdin`, or `--name`)

    @property
    def key(self) -> str:
        """What places the track in a shard: stable while files are added to its folder."""
        return self.relative or self.input


@dataclass
class TrackRecord:
    """What happened to one track. `duration` is in seconds of audio, `seconds` of wall time.

    `outputs` are the stem files of an ok or skipped track; a failed track has none (its planned
    files were not written, and may even be another track's).
    """

    input: str
    status: Literal["ok", "skipped", "failed"] = "failed"
    outputs: dict[str, Path] = field(default_factory=dict)
    duration: Optional[float] = None
    seconds: float = 0.0
    error: Optional[str] = None

    def as_dict(self) -> dict:
        """JSON-ready: paths as strings; `error` is null for a track that has none."""
        return {"input": self.input, "status": self.status,
                "outputs": {stem: str(path) for stem, path in self.outputs.items()},
                "duration": self.duration, "seconds": self.seconds, "error": self.error}


@dataclass(frozen=True)
class BatchEvent:
    """One step of a batch, for a progress display.

    kinds: `start` (a track begins separating), `progress` (`done` of `total` segments of it),
    `done` (its record is final: ok or skipped; `scale` is the anti-clipping factor applied) and
    `failed` (`message` is one line that names the input and the cause). Every track ends with
    exactly one `done` or `failed`; `start` and `progress` come only for tracks that get as far as
    separating.
    """

    kind: Literal["start", "progress", "done", "failed"]
    record: TrackRecord
    done: int = 0
    total: int = 0
    scale: float = 1.0
    message: str = ""


def model_label(model: Union[None, str, Path]) -> str:
    """The `{model}` field: a checkpoint's file stem, a catalog name, or the default model's name.

    A `Path` is always a checkpoint file; a string is a file when it has a suffix (`-n x.th`) or
    a folder (`-n ckpt/mine`), else a catalog name, so `{model}` never contains a folder or an
    extension.
    """
    if model is None:
        return DEFAULT_MODEL
    path = Path(model)
    return path.stem if isinstance(model, Path) or path.suffix or len(path.parts) > 1 else str(model)


def check_template(template: str) -> None:
    """TemplateError for unknown fields, no `{stem}`, or a name that leaves the output folder.

    Checked before any work so that a typo costs nothing; a track name that escapes the folder
    (a file called `...wav`) is still caught per track when its paths are rendered.
    """
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise TemplateError(template, f"is malformed: {exc}") from None
    fields = {name for name, _, _ in parsed}
    # a format spec or conversion can make stems share a name ({stem:.0} is "" for every stem)
    styled = [name for name, spec, conversion in parsed if spec or conversion]
    if styled:
        raise TemplateError(template, f"formats the field {{{styled[0]}}}: write fields plainly, as {{{styled[0]}}}")
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise TemplateError(template, f"has unknown field(s) {', '.join(sorted(unknown))} "
                                      f"(use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})")
    if "stem" not in fields:
        raise TemplateError(template, "must contain {stem}, or all stems would share one file")
    sample = PurePath(template.format(model="m", track="t", stem="s", ext="wav", dir="d"))
    if sample.is_absolute() or ".." in sample.parts or sample.drive or template.strip() in ("", "."):
        raise TemplateError(template, "would write outside the output folder")


def expand_inputs(inputs: Sequence[Union[str, Path]], out: Union[str, Path], *,
                  stdin: Optional[Track] = None) -> list[Track]:
    """One Track per audio file: files as given, folders searched recursively, glob patterns.

    Each file appears once however many inputs name it. Folder searches skip hidden files and
    anything inside `out`, so that re-running on a folder does not separate its own stems. An
    input that names no audio file becomes a Track with an `error`, so it is reported in order
    with the others instead of stopping the batch. An input `-` is `stdin` when given (a track
    already spooled from standard input).
    """
    found: list[Track] = []
    seen: set[Path] = set()
    out_resolved = Path(out).resolve()

    def add(path: Path, root: Optional[Path] = None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            relative = path.relative_to(root) if root is not None else None
            folder = relative.parent.as_posix() if relative is not None else ""
            found.append(Track(str(path), path, relative=relative.as_posix() if relative is not None else "",
                               folder="" if folder == "." else folder))

    for item in inputs:
        text, path = str(item), Path(item)
        if text == "-" and stdin is not None:  # (the track spooled from standard input)
            found.append(stdin)
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                and out_resolved not in p.resolve().parents and not p.name.startswith(".")
            )
            if not files:
                found.append(Track(text, error=f"{text}: folder contains no audio files"))
            for file in files:
                add(file, path)
        elif path.exists():
            add(path)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                found.append(Track(text, error=f"{text}: no files match this pattern"))
            for match in matches:
                add(match)
        else:
            found.append(Track(text, error=f"{text}: no such file or folder"))
    return found


def _target(out: Path, template: str, **fields: str) -> Path:
    """The final path of one stem; AudioError when a track's name makes it escape `out`."""
    relative = Path(template.format(**fields))
    if relative.is_absolute() or ".." in relative.parts:
        raise AudioError(f"output name {relative} would leave the output folder {out}")
    return out / relative


def _identity(path: Path) -> Optional[tuple[int, int]]:
    """The file `path` names (device and inode, links followed), or None where there is none."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _failure_line(track: Track, message: str) -> str:
    """The error as one line that names the input (prefixing it unless the message already does)."""
    if track.input in message or (track.path is not None and str(track.path) in message):
        return message
    return f"{track.input}: {message}"


@dataclass(frozen=True)
class BatchSettings:
    """What every track of a batch shares: where and how its stems are written."""

    out: Path
    model: str  # the `{model}` field
    names: list[str]  # the stem files of a track (see `pipeline.output_stems`)
    template: str = DEFAULT_TEMPLATE
    two_stems: Optional[str] = None
    options: OutputOptions = field(default_factory=OutputOptions)
    overwrite: bool = False


def plan_targets(track: Track, settings: BatchSettings) -> dict[str, Path]:
    """`{stem: final path}` of one track; AudioError (or TemplateError) when it names none."""
    if track.path is None:
        raise AudioError(track.error or f"{track.input}: no audio file")
    track_name = track.name or track.path.stem
    targets = {stem: _target(settings.out, settings.template, model=settings.model, track=track_name, stem=stem,
                             ext=settings.options.fmt, dir=track.folder) for stem in settings.names}
    if len(set(targets.values())) < len(targets):
        raise TemplateError(settings.template, f"gives two stems of {track.input} the same file name")
    return targets


def run_track(track: Track, targets: dict[str, Path], separator: Separator, settings: BatchSettings,
              inputs: set[tuple[int, int]], on_event: Optional[Callable[[BatchEvent], None]] = None,
              record: Optional[TrackRecord] = None) -> TrackRecord:
    """Separate one planned track (unless its stems all exist) and return its record.

    `inputs` are the files of the whole run (see `input_identities`): no stem may replace one.
    A StemsplitError or OSError fails only this track (a `failed` event and record); it is never
    raised. While the track separates, `separator.progress` is borrowed for `progress` events.
    The one contract every runner of a batch (local, or a cluster's workers) keeps per track.
    """
    record = record if record is not None else TrackRecord(track.input)
    started = time.perf_counter()

    def emit(event: BatchEvent) -> None:
        if on_event is not None:
            on_event(event)

    try:
        # a folder where a stem goes would pass for a finished output and the track be "skipped"
        folders = [p for p in targets.values() if os.path.isdir(p)]
        if folders:
            raise AudioError(f"{folders[0]}: is a folder, so the stem cannot be written there")
        for path in targets.values():
            if _identity(path) in inputs:  # through a link or another spelling too
                raise AudioError(f"{path}: is an input of this run, and a stem would replace it "
                                 "(choose another output folder or name template)")
        # os.path.exists, not Path.exists: a name too long for the file system must fail this
        # track when it is written (one error line), not raise here and stop the batch
        if not settings.overwrite and all(os.path.exists(p) for p in targets.values()):
            record.status, record.outputs = "skipped", targets
            emit(BatchEvent("done", record))
            return record
        assert track.path is not None
        emit(BatchEvent("start", record))
        previous = separator.progress
        if on_event is not None:
            separator.progress = lambda done, total: emit(BatchEvent("progress", record, done=done, total=total))
        try:
            result = separate_file(track.path, separator, targets, settings.options, two_stems=settings.two_stems,
                                   on_start=lambda seconds: setattr(record, "duration", seconds))
        finally:
            separator.progress = previous
    except (StemsplitError, OSError) as exc:
        return fail_track(track, record, exc, started, on_event)
    record.status, record.outputs, record.duration = "ok", targets, result.duration
    record.seconds = round(time.perf_counter() - started, 3)
    emit(BatchEvent("done", record, scale=result.scale))
    return record


def fail_track(track: Track, record: TrackRecord, exc: BaseException, started: float,
               on_event: Optional[Callable[[BatchEvent], None]] = None) -> TrackRecord:
    """Record `exc` as the track's failure (one line naming the input) and report it."""
    if isinstance(exc, OSError) and not isinstance(exc, StemsplitError):  # a folder one may not read, a long name
        exc = AudioError(f"{exc.filename or track.input}: {exc.strerror or exc}")
    record.status, record.error = "failed", str(exc)
    record.seconds = round(time.perf_counter() - started, 3)
    if on_event is not None:
        on_event(BatchEvent("failed", record, message=_failure_line(track, str(exc))))
    return record


def input_identities(tracks: Sequence[Track]) -> set[tuple[int, int]]:
    """The files (device, inode) the tracks of a run read: no stem of the run may replace one."""
    return {key for key in (_identity(t.path) for t in tracks if t.path is not None) if key is not None}


class BatchPlan:
    """The planning half of a batch, shared by every runner (local, or a cluster's driver).

    Checks the template and stems first (TemplateError, ModelError: nothing runs), then holds
    the settings, one record per track, each track's targets (or why it has none) and the names
    held: a track holds its names from `claim` until `release` finds it failed, and a track whose
    names an earlier, unfailed one holds fails as a collision. A runner that runs tracks out of
    order keeps that outcome by claiming a track only once the earlier tracks sharing one of its
    names (`blockers`) are finished. The arguments are `separate_batch`'s; `sources` the model's.
    """

    def __init__(self, tracks: Sequence[Track], out: Union[str, Path], sources: Sequence[str], *, model: str,
                 template: str = DEFAULT_TEMPLATE, stems: Optional[Sequence[str]] = None,
                 two_stems: Optional[str] = None, options: Optional[OutputOptions] = None,
                 overwrite: bool = False) -> None:
        check_template(template)
        self.settings = BatchSettings(Path(out), model, output_stems(sources, stems, two_stems), template,
                                      two_stems, options if options is not None else OutputOptions(), overwrite)
        self.tracks = list(tracks)
        self.records = [TrackRecord(t.input) for t in self.tracks]
        self.inputs = input_identities(self.tracks)
        self._plans: list[Union[dict[str, Path], StemsplitError, OSError]] = []
        for track in self.tracks:
            try:
                self._plans.append(plan_targets(track, self.settings))
            except (StemsplitError, OSError) as exc:  # reported when the track's turn comes
                self._plans.append(exc)
        self._held: dict[Path, str] = {}  # final path -> the input that writes (or wrote) it
        names = [list(plan.values()) if isinstance(plan, dict) else [] for plan in self._plans]
        users: dict[Path, list[int]] = {}
        for index, paths in enumerate(names):
            for path in paths:
                users.setdefault(path, []).append(index)
        self.blockers = [sorted({j for p in paths for j in users[p] if j < i}) for i, paths in enumerate(names)]

    def claim(self, index: int, on_event: Optional[Callable[[BatchEvent], None]] = None) -> Optional[dict[str, Path]]:
        """The targets of track `index`, now held by it; or None, the track failed (record and
        event), when it has none or an earlier track holds them."""
        track, targets = self.tracks[index], self._plans[index]
        try:
            if not isinstance(targets, dict):
                raise targets
            clash = [self._held[p] for p in targets.values() if p in self._held]
            if clash:
                raise AudioError(f"{track.input}: output files collide with those of {clash[0]} "
                                 "(tell them apart with {track} in the name template, or rename one)")
        except (StemsplitError, OSError) as exc:
            fail_track(track, self.records[index], exc, time.perf_counter(), on_event)
            return None
        self._held.update({p: track.input for p in targets.values()})
        return targets

    def release(self, index: int) -> None:
        """Claimed track `index` is finished; a failed one wrote nothing, so its names go back."""
        plan = self._plans[index]
        if self.records[index].status == "failed" and isinstance(plan, dict):
            for path in plan.values():
                self._held.pop(path, None)


def separate_batch(
    tracks: Sequence[Track],
    separator: Separator,
    out: Union[str, Path],
    *,
    model: str,
    template: str = DEFAULT_TEMPLATE,
    stems: Optional[Sequence[str]] = None,
    two_stems: Optional[str] = None,
    options: Optional[OutputOptions] = None,
    overwrite: bool = False,
    on_event: Optional[Callable[[BatchEvent], None]] = None,
) -> list[TrackRecord]:
    """Separate every track into `out/<template>` and return one record per track, in order.

    `model` fills the template's `{model}` field (see `model_label`); `stems` and `two_stems`
    choose the files written as in `pipeline.output_stems`. The template and stems are checked
    first (TemplateError, ModelError) so that nothing runs when they are wrong. After that, a
    StemsplitError fails only its own track, and a track whose outputs collide with an earlier
    one's fails (a failed track gives its names back).
    """
    plan = BatchPlan(tracks, out, separator.sources, model=model, template=template, stems=stems,
                     two_stems=two_stems, options=options, overwrite=overwrite)
    for index, track in enumerate(plan.tracks):
        targets = plan.claim(index, on_event)
        if targets is not None:
            run_track(track, targets, separator, plan.settings, plan.inputs, on_event, plan.records[index])
            plan.release(index)
    return plan.records
