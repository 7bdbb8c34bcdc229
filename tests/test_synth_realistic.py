"""Recorded material in the generator (drum kits, voices), its train/valid split, the deny-list
of reserved material, bounded reads of hostile files and PSOLA; on tiny fake sample libraries
built here, so no sample package is needed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from stemsplit.errors import DataError
from stemsplit.synth import master, psola, render_song
from stemsplit.synth.reserved import is_reserved
from stemsplit.synth.samples import audio, hydrogen, library

SR = 22050
KITS = "usr/share/hydrogen/data/drumkits"
VOICES = "usr/share/ktuberling/sounds"


def _hit(freq: float, decay: float, seconds: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.3
    return ((np.sin(2 * np.pi * freq * t) + noise) * np.exp(-t / decay)).astype(np.float32)


def _kit(root: Path, name: str) -> Path:
    folder = root / KITS / name
    folder.mkdir(parents=True)
    layers = {"Kick": [("kick_soft.wav", 0.0, 0.5, _hit(60, 0.1, seed=1) * 0.3),
                       ("kick_hard.wav", 0.5, 1.0, _hit(60, 0.1, seed=2))],
              "Snare": [("snare.wav", 0.0, 1.0, _hit(200, 0.08, seed=3))],
              "Closed HH": [("hat.wav", 0.0, 1.0, _hit(7000, 0.02, seed=4))]}
    xml = ["<drumkit_info><name>" + name + "</name><instrumentList>"]
    for inst, files in layers.items():
        xml.append(f"<instrument><name>{inst}</name><volume>1</volume>")
        for fname, lo, hi, data in files:
            soundfile.write(folder / fname, data, SR)
            xml.append(f"<layer><filename>{fname}</filename><min>{lo}</min><max>{hi}</max><gain>1</gain></layer>")
        xml.append("</instrument>")
    xml.append("</instrumentList></drumkit_info>")
    (folder / "drumkit.xml").write_text("".join(xml))
    return folder


def _word(f0: float, seed: int) -> np.ndarray:
    """Two voiced 'syllables' (a glottal-ish pulse train through two resonances) with a dip."""
    from scipy import signal

    out = []
    for k in range(2):
        n = int(0.25 * SR)
        x = np.zeros(n)
        x[::int(SR / (f0 * (1 + 0.05 * k)))] = 1.0
        for formant in (700, 1200):
            b, a = signal.iirpeak(formant, 4, SR)
            x = signal.lfilter(b, a, x)
        out += [x * np.hanning(n), np.zeros(int(0.08 * SR))]
    noise = np.random.default_rng(seed).standard_normal(sum(len(o) for o in out)) * 1e-4
    return (np.concatenate(out) + noise).astype(np.float32)


def _voice(root: Path, name: str, f0: float) -> Path:
    folder = root / VOICES / name
    folder.mkdir(parents=True)
    for i in range(3):
        soundfile.write(folder / f"word{i}.wav", _word(f0 * (1 + 0.1 * i), i), SR)
    return folder


@pytest.fixture(scope="module")
def lib_root(tmp_path_factory) -> Path:
    """A fake root: one train and one valid kit, one train and one valid voice, reserved decoys."""
    root = tmp_path_factory.mktemp("samples")
    _kit(root, "TrainKit")
    _kit(root, "BJA_Pacific")            # a valid kit (library.VALID)
    _voice(root, "en", 140.0)
    _voice(root, "el", 210.0)            # a valid voice
    _voice(root, "espeak-ng", 120.0)     # reserved: never listed
    fonts = root / "usr/share/sounds/sf2"
    fonts.mkdir(parents=True)
    (fonts / "FluidR3_GM.sf2").write_bytes(b"RIFF")
    return root


def _song(root, seed=1, split="train", **kw):
    return render_song(seed, 2.0, SR, samples=root, split=split, sample_share=1.0, **kw)


def test_reserved_material_is_refused_everywhere(lib_root, tmp_path):
    for path in ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/lmms/samples/drums/kick01.ogg",
                 "/usr/share/games/pingus/sounds/yipee.wav", "/usr/share/klettres/data/en/alpha/a.ogg",
                 "/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/en", "x/fluid-soundfont-gm/a.sf2"):
        assert is_reserved(path), path
    assert not is_reserved("/usr/share/hydrogen/data/drumkits/GMRockKit/drumkit.xml")
    hidden = tmp_path / "pingus" / "yipee.wav"  # a link with an innocent name into a reserved package
    hidden.parent.mkdir()
    hidden.write_bytes(b"RIFF")
    (tmp_path / "default.wav").symlink_to(hidden)
    assert is_reserved(tmp_path / "default.wav")
    found = [library.find_library(lib_root, s) for s in library.SPLITS]
    listed = [str(p) for lib in found
              for p in (*(k.path for k in lib.kits), *lib.soundfonts, *(f for v in lib.voices for f in v.files))]
    assert listed and not any(is_reserved(p) for p in listed)
    assert not any("FluidR3" in p or "espeak" in p for p in listed)
    pingus = tmp_path / "usr/share/games/pingus"
    pingus.mkdir(parents=True)
    with pytest.raises(DataError, match="reserved"):
        library.find_library(pingus)


def test_train_and_valid_share_no_material_and_songs_read_only_their_split(lib_root, monkeypatch):
    train, valid = (library.find_library(lib_root, s) for s in ("train", "valid"))
    assert [k.name for k in train.kits] == ["TrainKit"] and [k.name for k in valid.kits] == ["BJA_Pacific"]
    assert [v.name for v in train.voices] == ["ktuberling/en"] and [v.name for v in valid.voices] == ["ktuberling/el"]
    read = []
    real = audio._read.__wrapped__
    monkeypatch.setattr(audio, "_read", lambda path, sr, secs: read.append(path) or real(path, sr, secs))
    for seed in range(3):
        _song(lib_root, seed, "train")
    train_reads = set(read)
    read.clear()
    for seed in range(3):
        _song(lib_root, seed, "valid")
    assert train_reads and read
    assert all("/TrainKit/" in p or "/en/" in p for p in train_reads)
    assert all("/BJA_Pacific/" in p or "/el/" in p for p in read)


def test_recorded_songs_are_deterministic_exact_and_differ_from_procedural(lib_root):
    a, b = _song(lib_root, 4), _song(lib_root, 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["mixture"], a["drums"] + a["bass"] + a["other"] + a["vocals"])
    assert np.max(np.abs(a["mixture"])) <= 1.0
    plain = render_song(4, 2.0, SR)
    assert not np.allclose(a["drums"], plain["drums"], atol=1e-3)
    assert not np.allclose(a["vocals"], plain["vocals"], atol=1e-3)  # the recorded voice sings


def test_no_sample_material_falls_back_to_the_procedural_song(tmp_path):
    empty = render_song(2, 1.5, SR, samples=tmp_path, sample_share=1.0, master=False)
    plain = render_song(2, 1.5, SR)
    assert all(np.array_equal(empty[k], plain[k]) for k in plain)
    with pytest.raises(DataError, match="not found"):
        render_song(2, 1.5, SR, samples=tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        render_song(2, 1.5, SR, samples=tmp_path, split="test")


def test_hostile_sample_files_are_skipped_or_bounded(tmp_path):
    root = tmp_path / "root"
    kit = _kit(root, "Hostile")
    voice = _voice(root, "en", 150.0)
    header = bytearray(open(voice / "word0.wav", "rb").read()[:44])
    header[40:44] = (0x7FFFFFF0).to_bytes(4, "little")   # claims ~2 GB of samples, holds none
    (voice / "huge.wav").write_bytes(bytes(header) + b"\0" * 1000)
    (voice / "truncated.wav").write_bytes((voice / "word1.wav").read_bytes()[:60])
    (voice / "text.wav").write_text("not audio at all\n" * 10)
    (voice / "empty.flac").write_bytes(b"")
    (kit / "kick_hard.wav").write_text("garbage")           # a layer the kit names is unreadable
    (kit / "drumkit.xml").write_text((kit / "drumkit.xml").read_text().replace(
        "</instrumentList>", "<instrument><name>Snare 2</name><layer><filename>../../../../../etc/passwd"
        "</filename></layer></instrument></instrumentList>"))
    for name in ("huge.wav", "truncated.wav", "text.wav", "empty.flac"):
        x = audio.read(voice / name, SR, 1.0)
        assert x is None or x.shape[0] <= SR
    assert audio.read(voice / "word0.wav", SR, 0.1).shape[0] <= int(0.1 * SR) + 1
    assert all(layer.path.is_relative_to(kit) for insts in hydrogen.load_kit(kit / "drumkit.xml").values()
               for inst in insts for layer in inst.layers)
    out = render_song(3, 1.5, SR, samples=root, sample_share=1.0)
    assert np.all(np.isfinite(out["mixture"]))


def test_velocity_layers_and_round_robin(lib_root):
    kit = hydrogen.load_kit(lib_root / KITS / "TrainKit" / "drumkit.xml")
    player = hydrogen.KitPlayer(np.random.default_rng(0), kit, SR)
    soft, hard = player.hit("kick", 0.2), player.hit("kick", 0.9)
    assert player.chosen["kick"].layers[0].path.name == "kick_soft.wav"
    assert np.max(np.abs(soft[0])) * soft[1] == pytest.approx(np.max(np.abs(hard[0])) * hard[1])
    assert not np.array_equal(soft[0], hard[0])
    assert player.piece("hat_open") == "hat_closed" and player.piece("conga") is None
    assert hydrogen.piece_of("Pearl Side Stick") == "rim" and hydrogen.piece_of("Snare Roll") is None


def test_psola_keeps_length_and_moves_pitch_keeping_formants():
    x = _word(150.0, 0)[: int(0.25 * SR)]
    an = psola.analyse(x, SR)
    assert an.f0 == pytest.approx(150.0, rel=0.03)
    n = int(0.6 * SR)
    y = psola.render(x, an, SR, n, target_hz=np.full(n, 220.0))
    assert y.shape == (n,) and y.dtype == np.float32
    assert psola.analyse(y, SR).f0 == pytest.approx(220.0, rel=0.03)

    def centroid(z):
        spec = np.abs(np.fft.rfft(z * np.hanning(z.size)))
        return float(np.sum(spec * np.fft.rfftfreq(z.size, 1 / SR)) / np.sum(spec))
    assert centroid(y) == pytest.approx(centroid(x), rel=0.25)  # the vowel stays where it was


def test_cli_synth_with_samples_and_split(lib_root, tmp_path):
    cmd = [sys.executable, "-m", "stemsplit", "synth", str(tmp_path / "out"), "--songs", "1", "--seconds", "1",
           "--samplerate", str(SR), "--samples", str(lib_root), "--split", "valid", "--sample-share", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 drum kits, 1 voices" in done.stdout and "valid split" in done.stdout
    mix, _ = soundfile.read(tmp_path / "out/song_00000/mixture.wav", dtype="float32")
    stems = [soundfile.read(tmp_path / f"out/song_00000/{s}.wav", dtype="float32")[0]
             for s in ("drums", "bass", "other", "vocals")]
    assert np.array_equal(mix, ((stems[0] + stems[1]) + stems[2]) + stems[3])
    bad = subprocess.run(cmd[:7] + ["--split", "valid"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--samples" in bad.stderr


def test_limiter_keeps_the_stems_summing_exactly_under_the_ceiling():
    rng = np.random.default_rng(0)
    stems = {k: (rng.standard_normal((2, SR)) * s).astype(np.float32)
             for k, s in (("drums", 0.05), ("bass", 0.03), ("other", 0.02), ("vocals", 0.04))}
    stems["drums"][:, 1000:1010] = 3.0  # a hard transient far over the ceiling
    out = master.limit(stems, SR, 0.8)
    mix = master.mix_of(out)
    assert float(np.max(np.abs(mix))) <= 0.8
    gain = out["bass"] / np.where(stems["bass"] == 0, 1, stems["bass"])
    assert np.allclose(gain, out["vocals"] / stems["vocals"], rtol=1e-5)  # one gain for every stem
    assert float(np.mean(np.abs(mix))) > 0.9 * float(np.mean(np.abs(master.mix_of(stems))))  # only peaks move
    song = render_song(5, 2.0, SR, master=True)
    assert np.array_equal(song["mixture"], song["drums"] + song["bass"] + song["other"] + song["vocals"])
    assert float(np.max(np.abs(song["mixture"]))) <= 1.0
    assert not np.allclose(song["vocals"], render_song(5, 2.0, SR)["vocals"], atol=1e-4)


def test_training_synth_source_draws_train_and_validation_from_their_splits(lib_root, monkeypatch):
    from stemsplit.errors import ConfigError
    from stemsplit.train.config import TrainConfig
    from stemsplit.train.data import SynthSource, synth_options

    assert synth_options(None, 0.7, "train") == {}
    read = []
    real = audio._read.__wrapped__
    monkeypatch.setattr(audio, "_read", lambda path, sr, secs: read.append(path) or real(path, sr, secs))
    frames = SR
    valid = SynthSource(["drums", "vocals"], SR, 2, frames, 0, **synth_options(str(lib_root), 1.0, "valid"))
    song = valid.song(valid.VALID_FIRST_SONG, frames)
    assert song.shape == (2, 2, frames) and read and all("/BJA_Pacific/" in p or "/el/" in p for p in read)
    with pytest.raises(DataError):
        synth_options(str(lib_root / "missing"), 0.7, "train")
    with pytest.raises(ConfigError, match="synth_sample_share"):
        TrainConfig(synth_weight=1.0, synth_samples="auto", synth_sample_share=1.5).check()


def test_sonic_pi_one_shots_make_a_multi_velocity_kit(tmp_path):
    from stemsplit.synth.samples import choose, sonicpi

    folder = tmp_path / sonicpi.FOLDER
    folder.mkdir(parents=True)
    for i, stem in enumerate(("drum_bass_soft", "drum_bass_hard", "drum_snare_hard", "bd_808", "sn_dub")):
        soundfile.write(folder / f"{stem}.flac", _hit(80 + 50 * i, 0.05, seed=i), SR)
    kits = {k.name: k for k in library.find_library(tmp_path, "train").kits}
    assert set(kits) == {"sonic-pi/acoustic", "sonic-pi/electronic"}
    acoustic = choose.load_kit(kits["sonic-pi/acoustic"])
    assert [la.path.stem for la in acoustic["kick"][0].layers] == ["drum_bass_soft", "drum_bass_hard"]
    out = render_song(6, 1.5, SR, samples=tmp_path, sample_share=1.0)
    assert np.array_equal(out["mixture"], out["drums"] + out["bass"] + out["other"] + out["vocals"])
