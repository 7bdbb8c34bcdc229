"""Bags of models: validation, which members a set of stems needs, and the weighted combination
matching the official `apply_model` on bags."""
from fractions import Fraction

import pytest
import torch

import stemsplit.nn as snn
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


def test_members_for_skips_members_with_zero_weight_for_every_requested_stem():
    bag = BagOfModels([official_hdemucs(s) for s in range(4)], FT_WEIGHTS)
    assert bag.members_for(["vocals"]) == [3]
    assert bag.members_for(["drums", "vocals"]) == [0, 3]
    assert bag.members_for() == [0, 1, 2, 3]
    mdx = BagOfModels([official_hdemucs(s) for s in range(4)], MDX_WEIGHTS)
    assert mdx.members_for(["bass"]) == [0, 1]
    assert mdx.members_for(["other"]) == [2, 3]


def test_forward_matches_official_apply_model_on_a_bag():
    from demucs.apply import BagOfModels as OfficialBag
    from demucs.apply import apply_model

    members = [official_hdemucs(s) for s in range(4)]
    ours = BagOfModels(members, MDX_WEIGHTS)
    official = OfficialBag(members, MDX_WEIGHTS)
    torch.manual_seed(3)
    mix = torch.randn(2, 2, 8000)
    with torch.no_grad():
        expected = apply_model(official, mix, shifts=0, split=False)
        got = ours(mix)
    assert got.shape == (2, 4, 2, 8000)
    assert (got - expected).abs().max() <= 1e-5


def test_combining_only_the_needed_members_gives_the_same_requested_stems():
    members = [official_hdemucs(s) for s in range(4)]
    bag = BagOfModels(members, MDX_WEIGHTS)
    torch.manual_seed(4)
    mix = torch.randn(1, 2, 6000)
    with torch.no_grad():
        full = bag(mix)
        needed = bag.members_for(["bass"])
        partial = bag.combine([(i, members[i](mix)) for i in needed])
    assert torch.allclose(partial[:, 1], full[:, 1], atol=1e-6)
    assert torch.equal(partial[:, 3], torch.zeros_like(partial[:, 3]))


def test_default_weights_are_a_plain_average():
    members = [official_hdemucs(s) for s in range(2)]
    bag = BagOfModels(members)
    assert bag.weights == [[1.0] * 4, [1.0] * 4]
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        assert torch.allclose(bag(mix), (members[0](mix) + members[1](mix)) / 2, atol=1e-6)


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
    with pytest.raises(ModelError, match="unknown source 'kazoo'"):
        inner.members_for(["kazoo"])


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
