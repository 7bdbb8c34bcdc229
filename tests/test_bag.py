"""Bags of models: validation, which members a set of stems needs (engine.plan), and the weighted
combination the Separator makes of them."""
from fractions import Fraction

import pytest
import torch

import stemsplit.nn as snn
from stemsplit.engine import plan
from stemsplit.engine.separator import Separator
from stemsplit.errors import ModelError
from stemsplit.nn.bag import BagOfModels

SOURCES = ["drums", "bass", "other", "vocals"]
FT_WEIGHTS = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
MDX_WEIGHTS = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]


def official_hdemucs(seed, **overrides):
    from demucs.hdemucs import HDemucs

    torch.manual_seed(seed)
    return HDemucs(**{"sources": SOURCES, "channels": 8, "depth": 3, "nfft": 256, **overrides}).eval()


def tiny_htdemucs(seed=0, segment=Fraction(1, 2)):
    torch.manual_seed(seed)
    return snn.HTDemucs(sources=SOURCES, channels=16, depth=2, nfft=512, t_layers=1, segment=segment).eval()


def _needed(bag, stems=None):
    return plan.contributing(bag, plan.source_indices(bag.sources, stems))


def test_only_members_with_a_weight_for_a_requested_stem_run():
    bag = BagOfModels([official_hdemucs(s) for s in range(4)], FT_WEIGHTS)
    assert _needed(bag, ["vocals"]) == [3]
    assert _needed(bag, ["drums", "vocals"]) == [0, 3]
    assert _needed(bag) == [0, 1, 2, 3]
    mdx = BagOfModels([official_hdemucs(s) for s in range(4)], MDX_WEIGHTS)
    assert _needed(mdx, ["bass"]) == [0, 1]
    assert _needed(mdx, ["other"]) == [2, 3]


def _separate(model, mix, stems=None):
    return Separator(model, device="cpu", segment=1.0).separate_tensor(mix, stems)


def test_a_bag_is_the_per_source_weighted_average_of_its_members():
    members = [official_hdemucs(s) for s in range(4)]
    bag = BagOfModels(members, MDX_WEIGHTS)
    torch.manual_seed(3)
    mix = torch.randn(2, 30000)
    each = torch.stack([_separate(m, mix) for m in members])  # (member, source, channel, time)
    weights = torch.tensor(MDX_WEIGHTS, dtype=torch.float32)[:, :, None, None]
    expected = (each * weights).sum(0) / weights.sum(0)
    got = _separate(bag, mix)
    assert got.shape == (4, 2, 30000)
    assert (got - expected).abs().max() <= 1e-5


def test_running_only_the_needed_members_gives_the_same_requested_stems():
    bag = BagOfModels([official_hdemucs(s) for s in range(4)], MDX_WEIGHTS)
    torch.manual_seed(4)
    mix = torch.randn(2, 20000)
    full = _separate(bag, mix)
    calls = []
    for index, member in enumerate(bag.models):
        member.register_forward_hook(lambda module, args, out, index=index: calls.append(index))
    partial = _separate(bag, mix, ["bass"])
    assert set(calls) == {0, 1}
    assert torch.allclose(partial[0], full[1], atol=1e-6)


def test_default_weights_are_a_plain_average():
    members = [official_hdemucs(s) for s in range(2)]
    bag = BagOfModels(members)
    assert bag.weights == [[1.0] * 4, [1.0] * 4]
    mix = torch.randn(2, 12000)
    assert torch.allclose(_separate(bag, mix), (_separate(members[0], mix) + _separate(members[1], mix)) / 2,
                          atol=1e-6)


def test_bag_exposes_the_model_attributes():
    bag = BagOfModels([official_hdemucs(0, segment=12), official_hdemucs(1, segment=8)])
    assert bag.sources == SOURCES and bag.samplerate == 44100 and bag.audio_channels == 2
    assert bag.segment == 8 and bag.segment_override is None


@pytest.mark.parametrize("members, weights, message", [
    ([], None, "at least one model"),
    ([0, "six"], None, "sources"),
    ([0, "rate"], None, "samplerate"),
    ([0, 1], [[1, 1, 1, 1]], "2 rows"),
    ([0, 1], [[1, 1, 1], [1, 1, 1]], "4 numbers"),
    ([0, 1], [[1, 0, 1, 1], [1, 0, 1, 1]], "zero for source 'bass'"),
    ([0, 1], [[1, -1, 1, 1], [1, 1, 1, 1]], "negative"),
])
def test_invalid_bags_are_model_errors(members, weights, message):
    variants = {"six": {"sources": SOURCES + ["guitar", "piano"]}, "rate": {"samplerate": 48000}}
    models = [official_hdemucs(0, **variants[m]) if isinstance(m, str) else official_hdemucs(m) for m in members]
    with pytest.raises(ModelError, match=message):
        BagOfModels(models, weights)


def test_nested_bags_and_unknown_sources_are_refused():
    inner = BagOfModels([official_hdemucs(0)])
    with pytest.raises(ModelError, match="nested"):
        BagOfModels([inner])
    with pytest.raises(ModelError, match="unknown stem.*kazoo"):
        _needed(inner, ["kazoo"])


def test_bag_segment_overrides_members_but_never_lengthens_a_transformer():
    """As in official bags: a fixed-length model (HTDemucs) only takes a shorter segment."""
    longer = BagOfModels([tiny_htdemucs(0), tiny_htdemucs(1)], segment=44)
    assert [m.segment for m in longer.models] == [Fraction(1, 2), Fraction(1, 2)]
    shorter = BagOfModels([tiny_htdemucs(0), tiny_htdemucs(1)], segment=0.25)
    assert [m.segment for m in shorter.models] == [0.25, 0.25] and shorter.segment_override == 0.25
    free = BagOfModels([official_hdemucs(0)], segment=44)
    assert free.models[0].segment == 44 and free.segment == 44
    unfixed = tiny_htdemucs(0)
    unfixed.use_train_segment = False  # takes any length, so it takes a longer segment too
    assert BagOfModels([unfixed], segment=2).models[0].segment == 2
