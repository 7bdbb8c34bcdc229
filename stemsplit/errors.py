"""The error family users can cause.

Every error a user can trigger (bad file, unknown model, corrupted checkpoint, full disk, ...)
is a `StemsplitError` whose message names the file or thing at fault and the cause, in one line.
The CLI turns these into one red line and a non-zero exit; anything else is a bug and gets a
traceback. This module must stay import-light (no torch).
"""


class StemsplitError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug."""


class AudioError(StemsplitError):
    """An input cannot be decoded, or an output cannot be written."""


class ModelError(StemsplitError):
    """A model name is unknown, or a model cannot be built or used as asked."""


class SettingsError(ModelError):
    """A separation setting (segment, overlap, shifts, batch size) is impossible, or impossible
    for this model; the CLI reports it as a usage error (exit 2), like a bad option value."""


class CheckpointError(ModelError):
    """A checkpoint file is malformed, unsafe, or does not match its architecture."""


class DownloadError(StemsplitError):
    """A model file could not be fetched or failed its integrity check."""


class DataError(StemsplitError):
    """A training or evaluation data set is missing files or is inconsistent."""


class TemplateError(StemsplitError):
    """An output name template is malformed, lacks `{stem}`, or would write outside its folder.

    Carries the template and the reason apart, so that the CLI can name the option the template
    came from (`--filename`) while library callers still get a self-contained message.
    """

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"output name template {template!r} {reason}")
        self.template = template
        self.reason = reason
