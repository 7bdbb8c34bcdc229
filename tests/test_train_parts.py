"""The small training parts on their own: losses, learning-rate schedules, EMA, config parsing, state files."""
from __future__ import annotations

import contextlib
import math
from pathlib import PurePosixPath

import pytest
import torch

from stemsplit.errors import CheckpointError
from stemsplit.errors import ConfigError
from stemsplit.train.config import load_yaml, make_config, parse_assignments
from stemsplit.train.ema import EMA
from stemsplit.train.losses import StemLoss, stft_loss, waveform_loss
from stemsplit.train.schedule import Schedule
from stemsplit.train.state import load_state, save_state

SOURCES = ["drums", "bass", "other", "vocals"]


def test_waveform_losses_per_source():
    ref = torch.zeros(2, 4, 2, 100)
    est = ref.clone()
    est[:, 1] = 0.5
    assert torch.allclose(waveform_loss(est, ref, "l1"), torch.tensor([0.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(waveform_loss(est, ref, "mse"), torch.tensor([0.0, 0.25, 0.0, 0.0]))
    assert float(StemLoss(SOURCES, "l1")(est, ref)) == pytest.approx(0.5 / 4)
    weighted = StemLoss(SOURCES, "l1", source_weights={"bass": 3.0})  # weights 1, 3, 1, 1 normalised
    assert float(weighted(est, ref)) == pytest.approx(0.5 * 3 / 6)
    with pytest.raises(ConfigError, match="piano"):
        StemLoss(SOURCES, source_weights={"piano": 1.0})


def test_stft_loss_is_zero_for_equal_signals_and_grows_with_error():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 2, 1, 4096, generator=gen)
    assert torch.allclose(stft_loss(ref, ref, (256, 512)), torch.zeros(2), atol=1e-6)
    small = stft_loss(ref + 0.01 * torch.randn(ref.shape, generator=gen), ref, (256, 512))
    large = stft_loss(ref + 0.5 * torch.randn(ref.shape, generator=gen), ref, (256, 512))
    assert (small < large).all() and (small > 0).all()
    combined = StemLoss(["a", "b"], "l1", stft_weight=2.0, n_ffts=(256,))
    est = ref * 0.5
    want = waveform_loss(est, ref).mean() + 2.0 * stft_loss(est, ref, (256,)).mean()
    assert float(combined(est, ref)) == pytest.approx(float(want), rel=1e-5)


def test_stft_loss_of_a_source_silent_in_the_whole_batch_stays_bounded():
    # spectral convergence divided a silent source's leak by 1e-7: a 1% leak made a loss of 2e7
    gen = torch.Generator().manual_seed(0)
    ref = 0.1 * torch.randn(2, 2, 2, 4096, generator=gen)
    ref[:, 1] = 0
    est = ref + 1e-3 * torch.randn(ref.shape, generator=gen)
    loss = stft_loss(est, ref, (256, 512))
    assert loss[1] < 20  # mostly the log-magnitude term (log 1e-7 against the leak's log), itself bounded
    audible = stft_loss(est[:, :1], ref[:, :1], (256, 512))  # an audible source's value is unchanged
    assert float(loss[0]) == pytest.approx(float(audible[0]), rel=1e-5)


def test_cosine_schedule_with_warmup():
    schedule = Schedule("cosine", 1.0, total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert schedule.lr(0) == pytest.approx(0.1) and schedule.lr(9) == pytest.approx(1.0)
    assert schedule.lr(10) == pytest.approx(1.0)
    assert schedule.lr(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.lr(110) == pytest.approx(0.1)
    assert Schedule("constant", 0.5, 100).lr(99) == 0.5


def test_plateau_schedule_halves_after_patience_and_round_trips():
    schedule = Schedule("plateau", 1.0, 100, plateau_factor=0.5, plateau_patience=1)
    for score in (1.0, 2.0, 1.5, 1.9):
        schedule.observe(score)
    assert schedule.lr(50) == 0.5
    schedule.observe(1.0)
    assert schedule.lr(50) == 0.5  # one bad check after a reduction is within patience
    copy = Schedule("plateau", 1.0, 100, plateau_factor=0.5, plateau_patience=1)
    copy.load_state_dict(schedule.state_dict())
    assert copy.lr(50) == 0.5 and copy.best == 2.0 and copy.bad_checks == 1
    cosine = Schedule("cosine", 1.0, 100)
    cosine.observe(1.0)
    cosine.observe(0.0)
    cosine.observe(0.0)
    cosine.observe(0.0)
    assert cosine.factor == 1.0  # only "plateau" reacts to validation


def test_ema_averages_and_swaps_back():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 1/10) = 0.1 -> 0.9
    ema.update(model)  # min(0.5, 2/11) -> 0.9 * 2/11 + 9/11
    expected = 0.9 * 2 / 11 + 9 / 11
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), expected))
    for _ in range(20):  # past the warm-up the decay is the configured 0.5
        ema.update(model)
    assert ema.current_decay == 0.5
    with ema.swapped(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 1.0), atol=1e-6)
    assert torch.allclose(model.weight, torch.ones(1, 2))
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == ema.updates == 22


def test_yaml_and_assignments(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("musdb: data\nsteps: 7\nbetas: [0.8, 0.9]\naugment:\n  pitch: 2\n  gain_db: [-3, 3]\n")
    cfg = make_config(load_yaml(path))
    assert cfg.steps == 7 and cfg.betas == (0.8, 0.9) and cfg.augment.pitch == 2 and cfg.augment.gain_db == (-3, 3)
    assert str(cfg.musdb) == "data"
    assert make_config({"musdb": "x", "lr": "3e-4", "steps": 1e3}).lr == 3e-4  # YAML 1.1 reads 3e-4 as text
    assert make_config({"musdb": "x", "steps": 1e3}).steps == 1000
    with pytest.raises(ConfigError, match="steps: expected a finite int"):
        make_config({"musdb": "x", "steps": 2.5})
    with pytest.raises(ConfigError, match="lr: expected a finite float"):
        make_config({"musdb": "x", "lr": "fast"})
    with pytest.raises(ConfigError, match="augment: unknown key"):
        make_config({"musdb": "x", "augment": {"pitches": 2}})
    assert parse_assignments(["channels=32", "cac=false", "name=x"], "--kw") == {"channels": 32, "cac": False, "name": "x"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["channels"], "--kw")
    # YAML 1.2 floats without a dot are numbers for model kwargs too (PyYAML alone reads text)
    assert parse_assignments(["t_lr=1e-3", "x=-2E4", "v=1.5e+2", "tag=e5", "ver=1e"], "--kw") == {
        "t_lr": 1e-3, "x": -2e4, "v": 150.0, "tag": "e5", "ver": "1e"}
    path.write_text("musdb: data\nmodel_kwargs: {t_lr: 1e-4}\n")
    assert load_yaml(path)["model_kwargs"] == {"t_lr": 1e-4}
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(path)



@pytest.mark.parametrize("values, message", [
    # silently trained on NaN losses to the end
    ({"segment": 0}, "segment"), ({"segment": -1.5}, "segment"),
    # crashed with a traceback once training had started to set up
    ({"lr": -1}, "lr"), ({"augment": {"tempo": 1.0}}, "tempo"), ({"num_workers": -1}, "workers"),
    ({"threads": -2}, "threads"), ({"betas": 0.9}, "betas"), ({"betas": [0.9, 1.5]}, "betas"),
    ({"augment": {"gain_db": [0, "loud"]}}, "gain_db"), ({"source_weights": {"vocals": "loud"}}, "vocals"),
    ({"source_weights": [1, 2]}, "source_weights"), ({"model_kwargs": "channels=8"}, "model_kwargs"),
    ({"steps": None}, "steps"), ({"stft_ffts": [512, 0]}, "stft_ffts"), ({"sources": "vocals"}, "sources"),
    # silently ignored or inverted
    ({"augment": {"pitch": -2}}, "pitch"), ({"augment": {"shift": -1}}, "shift"),
    ({"augment": {"noise_prob": 2}}, "noise_prob"), ({"source_weights": {"vocals": -1}}, "source weights"),
    ({"warmup_steps": -5}, "warmup"), ({"clip_grad": -1}, "clip_grad"), ({"resume": "no"}, "resume"),
    # not finite: NaN training, an OverflowError, weights normalised to NaN
    ({"lr": float("inf")}, "lr: expected a finite float"), ({"segment": float("inf")}, "segment"),
    ({"augment": {"shift": float("inf")}}, "shift"), ({"musdb_weight": float("inf")}, "musdb_weight"),
    ({"synth_weight": float("nan")}, "synth_weight"), ({"source_weights": {"vocals": float("inf")}}, "vocals"),
])
def test_out_of_range_or_wrong_kind_config_values_are_refused_up_front(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config({"musdb": "x", **values})


def test_source_weights_that_are_all_zero_are_refused():
    with pytest.raises(ConfigError, match="positive weight"):  # 0/0: every step's loss would be NaN
        StemLoss(SOURCES, source_weights={s: 0 for s in SOURCES})
    assert StemLoss(SOURCES, source_weights={"vocals": 0}).weights.tolist() == pytest.approx([1 / 3] * 3 + [0])

def test_state_file_round_trip_refuses_pickled_objects(tmp_path):
    state = {"step": 3, "best": None, "rng": {"torch": torch.get_rng_state()}, "w": torch.arange(3.0),
             "nested": [1.5, {"x": "y"}]}
    save_state(tmp_path / "state.pt", state)
    back = load_state(tmp_path / "state.pt")
    assert back["step"] == 3 and torch.equal(back["w"], state["w"]) and back["nested"] == [1.5, {"x": "y"}]
    torch.save({"evil": PurePosixPath("x")}, tmp_path / "bad.pt")  # any class outside the allowlist is refused
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_state(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no training state"):
        load_state(tmp_path / "missing.pt")


def test_a_damaged_or_foreign_state_is_one_line_naming_the_file(tmp_path):
    """An empty, cut or non-state file gave a traceback (IndexError for a tensor), a blank detail, or
    torch's several-line text advising weights_only=False, that is, running the file's code."""
    save_state(tmp_path / "good.pt", {"w": torch.arange(1000.0)})
    good = (tmp_path / "good.pt").read_bytes()
    files = {"empty.pt": b"", "cut.pt": good[: len(good) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"evil": PurePosixPath("x")}, tmp_path / "object.pt")
    for name in ("empty.pt", "cut.pt", "tensor.pt", "object.pt"):
        with pytest.raises(CheckpointError) as info:
            load_state(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and "\n" not in message and "()" not in message, message
        assert "weights_only" not in message


def test_a_state_that_cannot_be_written_is_an_error_naming_it(tmp_path):
    """A full disk made torch.save raise a RuntimeError about zip positions: a traceback mid-run.
    A file-size limit fails the write the same way (Python ignores SIGXFSZ)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(CheckpointError, match=r"cannot write .*state\.pt"):
            save_state(tmp_path / "state.pt", {"w": torch.zeros(10_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []  # no half-written temporary file either


class _Echo(torch.nn.Module):
    """A "model" that returns a fixed estimate, so validation's arithmetic can be checked by hand."""
    sources = ["a", "b"]

    def __init__(self, estimate: torch.Tensor):
        super().__init__()
        self.estimate = estimate

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.estimate


def test_validation_leaves_silent_sources_out_of_their_mean():
    from stemsplit.metrics import usdr
    from stemsplit.train.trainer import validate

    torch.manual_seed(0)
    loud = torch.randn(1, 2, 2, 1000)
    quiet_b = loud.clone()
    quiet_b[:, 1] = 0  # source b is silent in the second excerpt
    est = loud + 0.1 * torch.randn_like(loud)
    first, second = usdr(loud, est)[0], usdr(quiet_b, est)[0]
    assert second[1] < -10  # what would drag the mean down: a leak scored against silence
    excerpts = [(loud.sum(1), loud), (quiet_b.sum(1), quiet_b)]
    scores = validate(_Echo(est), excerpts, torch.device("cpu"), contextlib.nullcontext)
    assert scores["a"] == pytest.approx(float((first[0] + second[0]) / 2))
    assert scores["b"] == pytest.approx(float(first[1]))
    assert scores["mean"] == pytest.approx((scores["a"] + scores["b"]) / 2)
    silent = torch.zeros_like(loud)
    silent[:, 0] = loud[:, 0]
    never = validate(_Echo(est), [(silent.sum(1), silent)], torch.device("cpu"), contextlib.nullcontext)
    assert math.isnan(never["b"]) and never["mean"] == pytest.approx(never["a"])


def test_checkpoint_and_validation_intervals_must_be_positive():
    # the trainer takes `step % interval`: 0 would stop the run with ZeroDivisionError after its first step
    for key in ("checkpoint_every", "valid_every"):
        with pytest.raises(ConfigError, match=key):
            make_config({"musdb": "x", key: 0})


def test_transformer_trains_at_its_own_rate_and_decay_in_proportion_to_the_schedule():
    """HTDemucs's t_lr / t_weight_decay (the reference's make_optim_group) reach the optimizer."""
    import stemsplit.nn as snn
    from stemsplit.train.model import param_groups

    model = snn.HTDemucs(sources=["a", "b"], channels=8, depth=2, nfft=256, t_layers=1, segment=1,
                         t_lr=1e-3, t_weight_decay=0.05)
    model.encoder[0].conv.weight.requires_grad_(False)
    groups = param_groups(model, lr=1e-4, weight_decay=0.0)
    transformer = {id(p) for p in model.crosstransformer.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, pytest.approx(10.0)]
    assert {id(p) for p in groups[1]["params"]} == transformer and groups[1]["weight_decay"] == 0.05
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in trainable)
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    schedule = Schedule("cosine", 1e-4, total_steps=10)
    assert schedule.apply(optimizer, 5) == pytest.approx(5e-5)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(5e-5), pytest.approx(5e-4)]
    model.crosstransformer.lr = "fast"
    with pytest.raises(ConfigError, match="learning rate must be a number, got 'fast'"):
        param_groups(model, lr=1e-4, weight_decay=0.0)
    plain = param_groups(snn.HDemucs(sources=["a", "b"], channels=8, depth=2, nfft=256), 1e-4, 0.01)
    assert len(plain) == 1 and plain[0]["weight_decay"] == 0.01 and plain[0]["lr_scale"] == 1.0
