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
    """A separation setting (segment, overlap, shifts, batch size, stems...) is impossible, or
    impossible for this model; the CLI reports it as a usage error (exit 2), like a bad option value.

    Carries the parameter's name apart from the reason, so that the API's message names the
    parameter (`segment must be ...`) while the CLI names its flag (`--segment must be ...`).
    """

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param} {reason}")
        self.param = param
        self.reason = reason

    def __reduce__(self) -> tuple:  # pickled whole: a Ray worker's error reaches the driver intact
        return type(self), (self.param, self.reason)


class CheckpointError(ModelError):
    """A checkpoint file is malformed, unsafe, or does not match its architecture."""


class DownloadError(StemsplitError):
    """A model file could not be fetched or failed its integrity check."""


class DownloadNotStarted(DownloadError):
    """A download that could not start: offline mode, no network, a name that does not resolve, a
    refused connection, no answer in time, an HTTP error; not a byte of the file arrived, so the
    cache is as it was. `cause` is the short reason (`connection refused`, `offline mode`)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message

    def __reduce__(self) -> tuple:  # (see SettingsError.__reduce__)
        return type(self), (str(self), self.cause)


class DataError(StemsplitError):
    """A training or evaluation data set is missing files or is inconsistent."""


class ConfigError(StemsplitError):
    """A training configuration (YAML file or flag) is malformed or contradictory."""


class TemplateError(StemsplitError):
    """An output name template is malformed, lacks `{stem}`, or would write outside its folder.

    Carries the template and the reason apart, so that the CLI can name the option the template
    came from (`--filename`) while library callers still get a self-contained message.
    """

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"output name template {template!r} {reason}")
        self.template = template
        self.reason = reason

    def __reduce__(self) -> tuple:  # (see SettingsError.__reduce__)
        return type(self), (self.template, self.reason)


def quote(value: object, limit: int = 100) -> str:
    """`repr(value)` cut to about `limit` characters: how a value read from a file appears in a
    message, so that a hostile file cannot make an error line megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's digit limit: a pickle can hold one
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text as one short line, for messages that wrap another library's error.

    A YAML error gives its problem and position (its own text quotes the offending line under a
    caret); others their first line (torch's run to several), or their type when they have no text.
    """
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        text = f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    else:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
