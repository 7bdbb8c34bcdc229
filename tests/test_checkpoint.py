"""Checkpoint formats: native round trips, official .th packages and safetensors exports, bags,
and the allowlist unpickler refusing anything that could run code."""
import io
import json
import os
import pickle
import sys
import types
from fractions import Fraction

import pytest
import soundfile
import torch
import yaml
from conftest import run_cli, tone
from safetensors.torch import save_file

import stemsplit.nn as snn
from stemsplit.engine import plan
from stemsplit.errors import CheckpointError
from stemsplit.models import checkpoint
from stemsplit.models.checkpoint import demucs as demucs_format
from stemsplit.nn.bag import BagOfModels

SOURCES = ["drums", "bass", "other", "vocals"]
TINY = {
    "Demucs": dict(sources=SOURCES, channels=8, depth=2, segment=Fraction(1, 2)),
    "HDemucs": dict(sources=SOURCES, channels=8, depth=3, nfft=256, segment=2),
    "HTDemucs": dict(sources=SOURCES, channels=16, depth=2, nfft=512, t_layers=1, segment=Fraction(1, 2)),
}


def tiny(architecture, seed=0, **overrides):
    torch.manual_seed(seed)
    return getattr(snn, architecture)(**{**TINY[architecture], **overrides}).eval()


def official_class(architecture):
    import demucs.demucs
    import demucs.hdemucs
    import demucs.htdemucs

    return {"Demucs": demucs.demucs.Demucs, "HDemucs": demucs.hdemucs.HDemucs,
            "HTDemucs": demucs.htdemucs.HTDemucs}[architecture]


def run(model, length=11025, seed=1):
    torch.manual_seed(seed)
    mix = torch.randn(1, 2, length)
    with torch.no_grad():
        return model(mix)


def separated(model, length=11025, seed=1):
    """A model or bag run the way stemsplit runs it (bags have no forward pass of their own)."""
    from stemsplit.engine.separator import Separator

    torch.manual_seed(seed)
    return Separator(model, device="cpu").separate_tensor(torch.randn(2, length))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---- native ------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", sorted(TINY))
def test_native_round_trip_keeps_weights_kwargs_and_output(tmp_path, architecture):
    model = tiny(architecture)
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(model, path, training={"epochs": 3, "valid_loss": 0.25},
                               extra={"card": "tiny", "pair": (1, Fraction(1, 3))})
    loaded = checkpoint.load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert_same_state(model, loaded)
    assert torch.equal(run(model), run(loaded))
    meta = checkpoint.read_metadata(path)
    assert meta["format"] == "stemsplit" and meta["architecture"] == architecture
    assert meta["sources"] == SOURCES and meta["samplerate"] == 44100 and meta["audio_channels"] == 2
    assert meta["segment"] == TINY[architecture]["segment"]
    assert meta["kwargs"] == model.init_kwargs
    assert meta["training"] == {"epochs": 3, "valid_loss": 0.25}
    assert meta["extra"] == {"card": "tiny", "pair": (1, Fraction(1, 3))}
    assert meta["stemsplit_version"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_fraction_segment_survives_as_a_fraction(tmp_path):
    path = tmp_path / "ht.safetensors"
    checkpoint.save_checkpoint(tiny("HTDemucs", segment=Fraction(39, 5)), path)
    loaded = checkpoint.load_checkpoint(path)
    assert isinstance(loaded.segment, Fraction) and loaded.segment == Fraction(39, 5)


def test_a_safetensors_header_length_ending_in_0x80_is_not_taken_for_a_pickle(tmp_path):
    """One native file in 256 has 0x80, a pickle's first byte, as the low byte of its header
    length; such a file (a shipped-model candidate) was refused as "not a Demucs model package"."""
    model, path = tiny("HDemucs"), tmp_path / "model.safetensors"
    for pad in range(256):
        checkpoint.save_checkpoint(model, path, extra={"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert checkpoint.load_checkpoint(path).init_kwargs == model.init_kwargs


def test_a_changed_segment_is_what_loads(tmp_path):
    model = tiny("HDemucs")
    model.segment = 44
    checkpoint.save_checkpoint(model, tmp_path / "model.safetensors")
    assert checkpoint.load_checkpoint(tmp_path / "model.safetensors").segment == 44


def test_failed_save_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(tiny("Demucs", seed=0), path)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        checkpoint.save_checkpoint(tiny("Demucs", seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_saving_something_that_is_not_an_architecture_fails(tmp_path):
    with pytest.raises(CheckpointError, match="Linear"):
        checkpoint.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_unknown_architecture_and_bad_kwargs_are_checkpoint_errors():
    with pytest.raises(CheckpointError, match="unknown architecture 'Wavenet'"):
        checkpoint.build_model("Wavenet", {})
    with pytest.raises(CheckpointError, match="cannot build HDemucs"):
        checkpoint.build_model("HDemucs", {"sources": SOURCES, "no_such_kwarg": 1})


def test_weights_that_do_not_match_the_kwargs_are_refused(tmp_path):
    model = tiny("HDemucs")
    path = tmp_path / "bad.safetensors"
    meta = checkpoint.encode_json({"architecture": "HDemucs", "kwargs": {**TINY["HDemucs"], "channels": 16}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"stemsplit": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match HDemucs"):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b"\x80\x02}q\x00"])
def test_garbage_files_are_checkpoint_errors(tmp_path, content):
    path = tmp_path / "junk.th"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.th"):
        checkpoint.load_checkpoint(path)


def test_truncated_native_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(tiny("Demucs"), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        checkpoint.load_checkpoint(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_checkpoint(tmp_path / "nope.safetensors")


def test_safetensors_without_model_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="without model metadata"):
        checkpoint.load_checkpoint(path)


def write_native(path, model, **changes):
    """A native checkpoint of `model` whose metadata document has `changes` applied (None drops a
    key; "kwargs.KEY" changes one constructor argument)."""
    document = json.loads(json.dumps(checkpoint.encode_json({
        "format_version": 1, "architecture": type(model).__name__, "kwargs": model.init_kwargs,
        "sources": SOURCES, "samplerate": model.samplerate, "audio_channels": 2, "segment": 1.0})))
    for key, value in changes.items():
        target, key = (document["kwargs"], key[7:]) if key.startswith("kwargs.") else (document, key)
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"stemsplit": json.dumps(document)})


@pytest.mark.parametrize("changes, message", [
    ({"kwargs.samplerate": "x"}, "samplerate must be a positive integer, got 'x'"),
    ({"kwargs.samplerate": 0}, "samplerate must be a positive integer"),
    ({"segment": -3}, "segment must be a positive number of seconds, got -3"),
    ({"segment": "abc"}, "segment must be a positive number"),
    ({"kwargs.sources": ["vocals", "vocals", "bass", "drums"]}, "sources must be distinct"),
    ({"kwargs.channels": -1}, "cannot build Demucs from the stored kwargs: .*negative"),
    ({"kwargs": [1, 2]}, "kwargs are a list"),
    ({"architecture": ["Demucs"]}, "unknown architecture \\['Demucs'\\]"),
    ({"architecture": None}, "no architecture and kwargs"),
    ({"kwargs.segment": {"_type": "fraction", "numerator": 1, "denominator": 0}}, "malformed checkpoint metadata"),
])
def test_metadata_a_model_cannot_run_with_is_refused_naming_the_file(tmp_path, changes, message):
    path = tmp_path / "edited.safetensors"
    write_native(path, tiny("Demucs", segment=1.0), **changes)
    with pytest.raises(CheckpointError, match=f"^{path}: .*{message}"):
        checkpoint.load_checkpoint(path)


def test_a_bad_checkpoint_is_one_line_on_the_command_line(tmp_path):
    soundfile.write(tmp_path / "song.wav", tone(0.5, 44100, 2), 44100)
    write_native(tmp_path / "edited.safetensors", tiny("Demucs", samplerate=44100), **{"kwargs.samplerate": "x"})
    result = run_cli("song.wav", "--model-path", "edited.safetensors", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: edited.safetensors: samplerate must be a positive integer, got 'x'"
    assert not (tmp_path / "separated").exists()


def test_a_truncated_th_file_says_so(tmp_path):
    path = tmp_path / "model.th"
    torch.save(official_package(official_model("Demucs")), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.th is a truncated or corrupted checkpoint"):
        checkpoint.load_checkpoint(path)


# ---- official formats --------------------------------------------------------------------------

def official_model(architecture, seed=0):
    torch.manual_seed(seed)
    return official_class(architecture)(**TINY[architecture]).eval()


def official_package(model, half=True):
    """The layout `demucs.states.serialize_model` produces."""
    args, kwargs = model._init_args_kwargs
    dtype = torch.half if half else None
    return {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": {k: p.data.to(device="cpu", dtype=dtype) for k, p in model.state_dict().items()},
        "training_args": {"dset": {"segment": 11, "sources": SOURCES}, "epochs": 360, "optim": {"lr": 3e-4}},
    }


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_official_th_package_with_half_state_loads_into_our_class(tmp_path, architecture):
    official = official_model(architecture)
    path = tmp_path / "955717e8-8726e21a.th"
    torch.save(official_package(official), path)
    ours = checkpoint.load_checkpoint(path)
    assert type(ours) is getattr(snn, architecture)
    official.load_state_dict({k: v.half().float() for k, v in official.state_dict().items()})
    assert (run(ours) - run(official)).abs().max() <= 1e-4
    meta = checkpoint.read_metadata(path)
    assert meta["format"] == "demucs-th" and meta["architecture"] == architecture
    assert meta["segment"] == TINY[architecture]["segment"] and meta["sources"] == SOURCES
    assert meta["training"]["epochs"] == 360


def test_official_th_with_positional_sources_and_float_state(tmp_path):
    official = official_model("HDemucs")
    package = official_package(official, half=False)
    kwargs = dict(package["kwargs"])
    package["args"], package["kwargs"] = (kwargs.pop("sources"),), kwargs
    path = tmp_path / "model.th"
    torch.save(package, path)
    ours = checkpoint.load_checkpoint(path)
    assert ours.sources == SOURCES
    assert (run(ours) - run(official)).abs().max() <= 1e-4


def write_official_export(model, path):
    """The layout `demucs.hf.load_safetensors_model` reads: tensors + JSON class/args/kwargs."""
    args, kwargs = model._init_args_kwargs
    klass = f"{type(model).__module__}.{type(model).__name__}"
    metadata = {"klass": klass, "args": json.dumps(list(args)),
                "kwargs": json.dumps(checkpoint.encode_json(kwargs))}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_official_safetensors_export_loads(tmp_path, architecture):
    from demucs.hf import load_safetensors_model

    official = official_model(architecture)
    path = tmp_path / "955717e8.safetensors"
    write_official_export(official, path)
    # The official loader reads the same file, so the layout we test against is the real one.
    assert torch.equal(run(load_safetensors_model(path).eval()), run(official))
    ours = checkpoint.load_checkpoint(path)
    assert (run(ours) - run(official)).abs().max() <= 1e-4
    assert checkpoint.read_metadata(path)["segment"] == TINY[architecture]["segment"]


def test_official_export_of_an_unknown_class_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"klass": "os.system", "args": "[]", "kwargs": "{}"})
    with pytest.raises(CheckpointError, match="unsupported model class 'os.system'"):
        checkpoint.load_checkpoint(path)


# ---- the allowlist unpickler -------------------------------------------------------------------

class _RunsACommand:
    """Unpickling this would call os.system (the classic pickle exploit)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    torch.save({"klass": _RunsACommand(marker), "state": {}}, path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and f"{os.system.__module__}.system" in message
    assert not marker.exists()
    # Sanity check of the test itself: an unrestricted unpickler would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


class _BuildsAModel:
    """Unpickling this would construct a model: allowed class names must not be callable."""

    def __reduce__(self):
        return (official_class("HDemucs"), (SOURCES,))


def test_allowlisted_classes_cannot_be_called_by_the_pickle(tmp_path):
    path = tmp_path / "constructs.th"
    torch.save({"klass": _BuildsAModel(), "state": {}}, path)
    with pytest.raises(CheckpointError, match="constructs.th.*not callable"):
        checkpoint.load_checkpoint(path)


def build_pickle(target: str, attribute: str) -> bytes:
    """A pickle that fetches the global `target` ("module\\nname") and sets `attribute` = (1,) on
    it with the BUILD opcode (state (None, {attribute: (1,)})), as any object's state is set."""
    name = attribute.encode()
    return (b"\x80\x02c" + target.encode() + b"\nN}X" + len(name).to_bytes(4, "little") + name
            + b"K\x01\x85s\x86b.")


@pytest.mark.parametrize("target, attribute", [("fractions\nFraction", "evil"),
                                               ("torch._utils\n_rebuild_tensor_v2", "__defaults__")])
def test_a_refused_pickle_has_not_changed_the_objects_it_may_use(tmp_path, target, attribute):
    """`Fraction.evil = (1,)`, or torch's rebuilder's `__defaults__ = (1,)`, which breaks every
    later torch.load of the process."""
    before = (getattr(Fraction, "evil", None), torch._utils._rebuild_tensor_v2.__defaults__)
    path = tmp_path / "build.th"
    path.write_bytes(build_pickle(target, attribute))
    with pytest.raises(CheckpointError, match="build.th"):
        checkpoint.load_checkpoint(path)
    assert (getattr(Fraction, "evil", None), torch._utils._rebuild_tensor_v2.__defaults__) == before


def test_a_pickle_cannot_rename_the_model_class_it_refers_to():
    with pytest.raises(AttributeError, match="may not set 'architecture'"):
        demucs_format._allowlist_load(io.BytesIO(build_pickle("demucs.hdemucs\nHDemucs", "architecture")))


def test_raw_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    path.write_bytes(pickle.dumps(_RunsACommand(marker), protocol=2))
    with pytest.raises(CheckpointError, match="system"):
        checkpoint.read_metadata(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.th"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        checkpoint.load_checkpoint(path)


def test_a_package_that_is_not_a_model_package_is_refused(tmp_path):
    path = tmp_path / "state.th"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a Demucs model package"):
        checkpoint.load_checkpoint(path)


def test_diffq_quantized_packages_are_refused_clearly(tmp_path, monkeypatch):
    path = tmp_path / "quantized_state.th"
    package = official_package(official_model("HDemucs"))
    package["state"] = {"__quantized": True, "packed": [torch.zeros(3, dtype=torch.uint8)]}
    torch.save(package, path)
    with pytest.raises(CheckpointError, match="diffq-quantized"):
        checkpoint.load_checkpoint(path)

    diffq = types.ModuleType("diffq")

    class UniformQuantizer:
        pass

    UniformQuantizer.__module__ = "diffq"
    UniformQuantizer.__qualname__ = "UniformQuantizer"
    diffq.UniformQuantizer = UniformQuantizer
    monkeypatch.setitem(sys.modules, "diffq", diffq)
    path = tmp_path / "quantized_global.th"
    torch.save({**package, "quantizer": UniformQuantizer}, path)
    with pytest.raises(CheckpointError, match="diffq-quantized"):
        checkpoint.load_checkpoint(path)


def test_quantized_safetensors_export_is_refused(tmp_path):
    path = tmp_path / "q.safetensors"
    save_file({"t0": torch.zeros(1)}, str(path),
              metadata={"klass": "demucs.hdemucs.HDemucs", "args": "[]", "kwargs": "{}", "structure": "{}"})
    with pytest.raises(CheckpointError, match="diffq-quantized"):
        checkpoint.load_checkpoint(path)


# ---- bags --------------------------------------------------------------------------------------

def test_save_bag_and_load_it_back(tmp_path):
    members = [tiny("HDemucs", seed=s) for s in range(3)]
    weights = [[1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 1, 0]]
    bag = BagOfModels(members, weights, segment=3)
    written = checkpoint.save_bag(bag, tmp_path / "mybag.json")
    assert {p.name for p in written} == {"mybag.json", "mybag.0.safetensors", "mybag.1.safetensors",
                                          "mybag.2.safetensors"}
    loaded = checkpoint.load_checkpoint(tmp_path / "mybag.json")
    assert isinstance(loaded, BagOfModels)
    assert loaded.weights == [[float(w) for w in row] for row in weights]
    assert all(member.segment == 3 for member in loaded.models)
    assert torch.equal(separated(loaded), separated(bag))
    meta = checkpoint.read_metadata(tmp_path / "mybag.json")
    assert meta["format"] == "bag" and meta["segment"] == 3 and len(meta["models"]) == 3


def test_official_yaml_bag_finds_members_by_signature(tmp_path):
    """An official bag names signatures; their files (`SIG-HASH.th` or `SIG.safetensors`) sit next to it."""
    first, second = official_model("HDemucs", seed=0), official_model("HDemucs", seed=1)
    torch.save(official_package(first), tmp_path / "0d19c1c6-0f06f20e.th")
    write_official_export(second, tmp_path / "7ecf8ec1.safetensors")
    (tmp_path / "pair.yaml").write_text(
        "models: ['0d19c1c6', '7ecf8ec1']\nweights: [\n  [1., 1., 0., 0.],\n  [0., 1., 1., 1.],\n]\nsegment: 44\n")
    bag = checkpoint.load_checkpoint(tmp_path / "pair.yaml")
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    assert bag.models[0].segment == 44
    out = separated(bag)
    first.load_state_dict({k: v.half().float() for k, v in first.state_dict().items()})
    first.segment = second.segment = 44
    a, b = separated(first), separated(second)
    expected = torch.stack([a[0], (a[1] + b[1]) / 2, b[2], b[3]])
    assert (out - expected).abs().max() <= 1e-4


def test_the_official_htdemucs_ft_bag_file_loads_from_an_export_folder(tmp_path):
    """The released bag YAML next to one safetensors export per signature (the exported layout)."""
    import demucs.pretrained

    remote = os.path.join(os.path.dirname(demucs.pretrained.__file__), "remote")
    text = open(os.path.join(remote, "htdemucs_ft.yaml")).read()
    (tmp_path / "htdemucs_ft.yaml").write_text(text)
    for seed, signature in enumerate(yaml.safe_load(text)["models"]):
        write_official_export(official_model("HDemucs", seed=seed), tmp_path / f"{signature}.safetensors")
    bag = checkpoint.load_checkpoint(tmp_path / "htdemucs_ft.yaml")
    assert isinstance(bag, BagOfModels) and len(bag.models) == 4
    assert plan.contributing(bag, [3]) == [3] and plan.contributing(bag, [0, 1]) == [0, 1]


def test_single_member_bag_is_the_member_with_the_bag_segment(tmp_path):
    checkpoint.save_checkpoint(tiny("HDemucs"), tmp_path / "75fc33f5.safetensors")
    (tmp_path / "solo.yaml").write_text(yaml.safe_dump({"models": ["75fc33f5"], "segment": 44}))
    model = checkpoint.load_checkpoint(tmp_path / "solo.yaml")
    assert isinstance(model, snn.HDemucs) and model.segment == 44


@pytest.mark.parametrize("document, message", [
    ({"models": []}, "non-empty 'models'"),
    ({"models": ["missing"]}, "no file missing"),
    ({"models": ["a.safetensors"], "weights": [[1, 1]]}, "weights"),
    ({"models": ["a.safetensors"], "weights": "heavy"}, "'weights' must be"),
    ({"models": ["a.safetensors"], "segment": -1}, "'segment' must be"),
    ({"models": ["a.safetensors"], "segment": float("nan")}, "'segment' must be"),
    ({"models": ["a.safetensors"], "segment": float("inf")}, "'segment' must be"),
    ({"models": ["a.safetensors"], "segment": True}, "'segment' must be"),
    ({"models": ["a.safetensors", "a.safetensors"], "weights": [[float("nan"), 1, 1, 1], [1, 1, 1, 1]]},
     "'weights' must be"),
    ({"models": ["inner.yaml"]}, "cannot be nested"),
])
def test_malformed_bags_are_checkpoint_errors(tmp_path, document, message):
    checkpoint.save_checkpoint(tiny("HDemucs"), tmp_path / "a.safetensors")
    (tmp_path / "inner.yaml").write_text(yaml.safe_dump({"models": ["a.safetensors"]}))
    path = tmp_path / "bag.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_checkpoint(path)


def test_a_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "bag.yaml"
    path.write_text("models: [a\n")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert "\n" not in str(info.value) and "bag.yaml is not a readable bag file" in str(info.value)
    assert "(line 2, column 1)" in str(info.value)


def test_bag_members_with_different_sources_are_refused(tmp_path):
    checkpoint.save_checkpoint(tiny("HDemucs"), tmp_path / "a.safetensors")
    checkpoint.save_checkpoint(tiny("HDemucs", sources=["vocals", "accompaniment"]), tmp_path / "b.safetensors")
    (tmp_path / "bag.json").write_text(json.dumps({"models": ["a.safetensors", "b.safetensors"]}))
    with pytest.raises(CheckpointError, match="bag.json.*sources"):
        checkpoint.load_checkpoint(tmp_path / "bag.json")


def test_json_encoding_round_trips_nested_fractions_and_tuples():
    value = {"segment": Fraction(39, 5), "scale": (5000.0, 1.0, 1.4), "list": [Fraction(1, 2), (1, 2)], "n": None}
    assert checkpoint.decode_json(json.loads(json.dumps(checkpoint.encode_json(value)))) == value
    with pytest.raises(TypeError):
        checkpoint.encode_json({"bad": object()})
