"""The training configuration: one dataclass, readable from YAML, overridable from flags.

Owns: every knob of a training run, their defaults, and turning a YAML mapping into a
`TrainConfig` (unknown keys are errors, so a typo never silently trains the wrong thing).
Must not: touch data, models or files other than the YAML it is asked to read.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from stemsplit.errors import ConfigError, one_line

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")


@dataclass
class AugmentConfig:
    """Which augmentations run, and how strongly. Every one is applied to stems, before mixing."""

    remix: bool = True
    """Each source of an example is taken from a different example of the batch."""
    gain: bool = True
    gain_db: tuple[float, float] = (-6.0, 3.0)
    """Per-source random gain, uniform in dB between these bounds."""
    flip: bool = True
    """Per-source random sign flip."""
    swap: bool = True
    """Per-source random left/right channel swap (stereo only)."""
    shift: float = 0.5
    """Per-source random time shift, up to this many seconds (0 switches it off)."""
    pitch: int = 0
    """Pitch shift by a whole number of semitones drawn from [-pitch, pitch] (0 switches it off)."""
    pitch_prob: float = 0.2
    tempo: float = 0.0
    """Time stretch by a rate drawn from [1 - tempo, 1 + tempo] (0 switches it off)."""
    tempo_prob: float = 0.2
    noise: bool = False
    """Add white noise to the `noise_source` stem, so the mixture still equals the sum of stems."""
    noise_db: tuple[float, float] = (-40.0, -20.0)
    """Noise level relative to the mixture's RMS, uniform in dB between these bounds."""
    noise_prob: float = 0.5
    noise_source: str = "other"


@dataclass
class TrainConfig:
    """Everything a training run needs. Paths are resolved by the caller."""

    out_dir: Path = Path("runs/train")
    # model
    architecture: str = "HTDemucs"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: Optional[str] = None
    """Start from this loadable model (name or file) instead of random weights."""
    widen: Optional[int] = None
    """With `init` (an HDemucs): start from it widened to this many first-layer channels."""
    freeze_encoder: bool = False
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    samplerate: int = 44100
    channels: int = 2
    # data
    musdb: Optional[Path] = None
    """MUSDB-style root (with train/ and valid/) or a folder of track folders."""
    valid: Optional[Path] = None
    """Validation folder; defaults to <musdb>/valid when that exists."""
    musdb_weight: float = 1.0
    synth_weight: float = 0.0
    synth_samples: Optional[str] = None
    """Recorded material for the synthetic songs ("auto" or a folder, see `stemsplit synth --samples`):
    training excerpts draw from its train split, validation excerpts from its valid split."""
    synth_sample_share: float = 0.7
    segment: Optional[float] = None
    """Excerpt length in seconds; defaults to the model's segment."""
    batch_size: int = 4
    num_workers: int = 0
    valid_excerpts: int = 16
    valid_synth: bool = True
    """With synth_weight > 0, half the validation excerpts are on-the-fly songs (the generator's
    valid split); False keeps validation on the --valid / musdb folder alone, where there is one."""
    # optimisation
    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    """"cosine" (with linear warmup), "plateau" (reduce on validation plateau) or "constant"."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    clip_grad: float = 0.0
    ema_decay: float = 0.0
    # loss
    loss: str = "l1"
    stft_weight: float = 0.0
    stft_ffts: tuple[int, ...] = (512, 1024, 2048)
    source_weights: dict[str, float] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # runtime
    device: str = "auto"
    precision: str = "auto"
    """"auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16" or "fp32"."""
    threads: Optional[int] = None
    seed: int = 0
    checkpoint_every: int = 500
    valid_every: int = 500
    resume: bool = False

    def check(self) -> None:
        """Reject contradictory or out-of-range settings before any data is read or model built: a
        zero segment or all-zero source weights trained on NaN losses to the end without a word, and
        a negative lr, --tempo 1 or --workers -1 crashed mid-setup."""
        aug = self.augment
        rules = [
            (self.musdb is not None or self.synth_weight > 0,
             "no training data: give --musdb and/or a positive --synth-weight"),
            (self.musdb is None or self.musdb_weight > 0 or self.synth_weight > 0, "data weights must not all be zero"),
            (self.loss in ("l1", "mse"), f"loss {self.loss!r}: expected 'l1' or 'mse'"),
            (self.schedule in ("cosine", "plateau", "constant"),
             f"schedule {self.schedule!r}: expected 'cosine', 'plateau' or 'constant'"),
            (self.precision in ("auto", "bf16", "fp32"),
             f"precision {self.precision!r}: expected 'auto', 'bf16' or 'fp32'"),
            (self.batch_size >= 1 and self.steps >= 1, "batch size and steps must be at least 1"),
            (self.checkpoint_every >= 1 and self.valid_every >= 1,
             "checkpoint_every and valid_every (--checkpoint-every, --valid-every) must be at least 1"),
            (not aug.remix or self.batch_size >= 2,
             "remix needs a batch size of at least 2 (or switch it off with --no-remix)"),
            (0 <= self.ema_decay < 1, f"ema decay {self.ema_decay}: expected 0 (off) or a value in (0, 1)"),
            (self.segment is None or self.segment > 0, "segment (--segment) must be a positive number of seconds"),
            (self.lr > 0, "lr (--lr) must be positive"),
            (self.widen is None or (self.init is not None and self.widen > 0),
             "--widen needs --init (the model to widen) and a positive channel count"),
            (all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
            (self.samplerate > 0 and self.channels > 0, "samplerate and channels must be positive"),
            (min(self.musdb_weight, self.synth_weight) >= 0, "data weights must not be negative"),
            (0 <= self.synth_sample_share <= 1, "synth_sample_share (--synth-sample-share) must be in [0, 1]"),
            (self.num_workers >= 0, "num_workers (--workers) must not be negative"),
            (self.threads is None or self.threads >= 0, "threads (--threads) must not be negative"),
            (self.valid_excerpts >= 0, "valid_excerpts (--valid-excerpts) must not be negative"),
            (self.warmup_steps >= 0, "warmup_steps (--warmup) must not be negative"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 < self.plateau_factor <= 1 and self.plateau_patience >= 0,
             "plateau_factor must be in (0, 1] and plateau_patience not negative"),
            (min(self.weight_decay, self.clip_grad, self.stft_weight) >= 0,
             "weight_decay, clip_grad and stft_weight must not be negative"),
            (all(n >= 4 for n in self.stft_ffts), "stft_ffts must be FFT sizes of at least 4"),
            (all(w >= 0 for w in self.source_weights.values()), "source weights must not be negative"),
            (0 <= aug.tempo < 1, "tempo (--tempo) must be in [0, 1): a stretch rate of 1 - tempo must stay positive"),
            (aug.pitch >= 0 and aug.shift >= 0, "pitch (--pitch) and shift (--shift) must not be negative"),
            (all(0 <= p <= 1 for p in (aug.pitch_prob, aug.tempo_prob, aug.noise_prob)),
             "pitch_prob, tempo_prob and noise_prob must be probabilities in [0, 1]"),
            (aug.gain_db[0] <= aug.gain_db[1] and aug.noise_db[0] <= aug.noise_db[1],
             "gain_db and noise_db must be [low, high] with low <= high"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)


def _number(value: Any, kind: type, where: str) -> Any:
    """A finite number from YAML or flags; YAML 1.1 reads `3e-4` (no dot) as a string, so strings count.

    inf and nan are refused: `--lr inf` trained on NaN to the end, `--segment inf` or `--shift inf`
    crashed on an OverflowError, and an infinite data or source weight normalised to NaN.
    """
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)
        if not math.isfinite(number) or (kind is int and not number.is_integer()):
            raise ValueError(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected a finite {kind.__name__}, got {value!r}") from exc
    return int(number) if kind is int else number


def _numbers(value: Any, kind: str, where: str) -> tuple[Any, ...]:
    """A tuple field: `tuple[float, float]` takes exactly two numbers, `tuple[int, ...]` one or more."""
    item = float if "float" in kind else int
    count = None if kind.endswith("...]") else kind.count(",") + 1
    if not isinstance(value, (list, tuple)) or not value or (count is not None and len(value) != count):
        wanted = f"{count} numbers" if count is not None else "a list of numbers"
        raise ConfigError(f"{where}: expected {wanted}, got {value!r}")
    return tuple(_number(v, item, where) for v in value)


def _coerce(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a mapping, converting values to the field's type (numbers, tuples of
    numbers, Paths) and refusing values of the wrong kind, so none reaches the trainer as a traceback."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kind = str(known[name].type)
        if name == "augment":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: 'augment' must be a mapping")
            value = _coerce(AugmentConfig, value, f"{where}: augment")
        elif value is not None and "Path" in kind:
            value = Path(value)
        elif kind.startswith("tuple"):
            value = _numbers(value, kind, f"{where}: {name}")
        elif kind.startswith("dict"):
            value = {} if value is None else value
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {name!r} must be a mapping")
            if kind == "dict[str, float]":
                value = {str(k): _number(v, float, f"{where}: {name}: {k}") for k, v in value.items()}
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}: {name}: expected true or false, got {value!r}")
        elif kind == "list[str]" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where}: {name}: expected a list of names, got {value!r}")
        elif kind in ("float", "int") or (value is not None and kind in ("Optional[float]", "Optional[int]")):
            value = _number(value, float if "float" in kind else int, f"{where}: {name}")
        kwargs[name] = value
    return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _yaml_loader() -> type:
    """The bounded safe loader of `stemsplit.documents`, plus YAML 1.2's floats without a dot
    (`1e-3`, `2E4`).

    PyYAML follows YAML 1.1, where `1e-3` is a string: `lr: 1e-3` or `--kw t_lr=1e-3` would then
    reach a model or optimizer as text.
    """
    from stemsplit.documents import yaml_loader

    class Loader(yaml_loader()):  # type: ignore[misc, valid-type]
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a plain mapping; a missing, malformed or hostile (huge,
    deeply nested, alias-bombed) file is a one-line ConfigError."""
    from stemsplit.documents import DocumentError, load_yaml as load, read_small_text

    try:
        data = load(read_small_text(Path(path)), _yaml_loader())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, DocumentError) as exc:
        raise ConfigError(f"{path}: cannot read config ({one_line(exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    return data


def make_config(values: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """Turn a mapping (from YAML, flags or both merged) into a checked `TrainConfig`."""
    cfg = _coerce(TrainConfig, values, where)
    cfg.check()
    return cfg


def to_jsonable(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON types, for logs and checkpoint metadata."""

    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(dataclasses.asdict(cfg))


def parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """["channels=32", "lstm_layers=0"] -> {"channels": 32, "lstm_layers": 0}; values are YAML scalars."""
    from stemsplit.documents import DocumentError, load_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = load_yaml(raw, _yaml_loader())
        except DocumentError as exc:
            raise ConfigError(f"{flag} {item!r}: bad value ({exc})") from exc
    return out
