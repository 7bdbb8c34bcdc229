"""Parity of stemsplit.nn with the demucs 4.1.0 package (test oracle only), at small sizes.

For every architecture and the kwarg variants that change the computation, the official model
is built with a fixed seed, its state_dict is loaded strictly into ours, and both run on the
same random input: outputs must agree to 1e-4. Training mode is checked too (forward and
gradients), since the project trains these models itself.
"""

from __future__ import annotations

import inspect
import re
from fractions import Fraction

import pytest
import torch

demucs_pkg = pytest.importorskip("demucs")

from demucs import demucs as ref_demucs  # noqa: E402
from demucs import hdemucs as ref_hdemucs  # noqa: E402
from demucs import htdemucs as ref_htdemucs  # noqa: E402
from demucs import transformer as ref_transformer  # noqa: E402

from stemsplit.errors import ModelError  # noqa: E402
from stemsplit.nn import ARCHITECTURES, Demucs, HDemucs, HTDemucs  # noqa: E402
from stemsplit.nn.layers import LocalState  # noqa: E402
from stemsplit.nn.transformer import CrossTransformerEncoder, sparse_pattern  # noqa: E402

FOUR = ["drums", "bass", "other", "vocals"]
SIX = FOUR + ["guitar", "piano"]
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pair(ref_cls, ours_cls, kwargs):
    torch.manual_seed(0)
    ref = ref_cls(**kwargs)
    ours = ours_cls(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _mix(channels: int, length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, length, generator=generator)


def _assert_eval_parity(ref_cls, ours_cls, kwargs, length):
    ref, ours = _pair(ref_cls, ours_cls, kwargs)
    ref.eval()
    ours.eval()
    mix = _mix(kwargs.get("audio_channels", 2), length)
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == expected.shape == (
        mix.shape[0], len(kwargs["sources"]), mix.shape[1], length)
    assert (got - expected).abs().max().item() <= TOLERANCE


# nfft 2048 with depth 4 keeps the branches apart down to the transformer (as released models
# do with 4096); nfft 1024 makes the last layer merge them (the "merged-bottleneck" variant).
HT_BASE = dict(sources=FOUR, channels=8, depth=4, nfft=2048, segment=1, t_layers=2, t_heads=4)
HT_VARIANTS = {
    "default-small": {},
    "bottom-channels": dict(bottom_channels=16),
    "six-sources": dict(sources=SIX),
    "cross-first-post-norm-relu": dict(t_layers=3, t_cross_first=True, t_norm_first=False,
                                       t_layer_scale=False, t_gelu=False),
    "group-norms-cape": dict(t_norm_in=False, t_norm_in_group=True, t_group_norm=True,
                             t_norm_out=False, t_emb="cape", t_weight_pos_embed=0.5),
    "scaled-emb-dconv-both-multiband": dict(t_emb="scaled", t_norm_in=False, dconv_mode=3,
                                            multi_freqs=[0.3],
                                            multi_freqs_depth=2),
    "no-transformer-wiener": dict(t_layers=0, cac=False, wiener_iters=1, end_iters=1,
                                  use_train_segment=False),
    "mono-masking": dict(audio_channels=1, cac=False, wiener_iters=-1, end_iters=-1,
                         norm_starts=2),
    "merged-bottleneck-nfft1024": dict(nfft=1024, bottom_channels=8),
    "nfft4096": dict(nfft=4096, t_layers=1),
}


@pytest.mark.parametrize("variant", sorted(HT_VARIANTS))
def test_htdemucs_matches_reference(variant):
    kwargs = {**HT_BASE, **HT_VARIANTS[variant]}
    # 30000 < 1 s at 44.1 kHz: exercises the padding to the training segment as well.
    _assert_eval_parity(ref_htdemucs.HTDemucs, HTDemucs, kwargs, 30000)


H_BASE = dict(sources=FOUR, channels=8, depth=4, nfft=256)
H_VARIANTS = {
    "default-small": {},
    "dconv-lstm-attn-both": dict(depth=5, nfft=1024, dconv_mode=3, dconv_attn=1, dconv_lstm=2),
    "multiband": dict(depth=5, nfft=1024, multi_freqs=[0.25, 0.5], multi_freqs_depth=2),
    "wiener-1": dict(cac=False, wiener_iters=1, end_iters=1),
    "masking": dict(cac=False, wiener_iters=-1, end_iters=-1, context_enc=1, rewrite=False),
    "spectrogram-only-wiener-residual": dict(depth=3, hybrid=False, cac=False, wiener_iters=2,
                                             end_iters=0, wiener_residual=True),
    "hybrid-old-no-freq-emb": dict(hybrid_old=True, freq_emb=0, growth=1.5,
                                   channels_time=12),
    "mono-wiener": dict(audio_channels=1, cac=False, wiener_iters=1, end_iters=1),
}


@pytest.mark.parametrize("variant", sorted(H_VARIANTS))
def test_hdemucs_matches_reference(variant):
    kwargs = {**H_BASE, **H_VARIANTS[variant]}
    _assert_eval_parity(ref_hdemucs.HDemucs, HDemucs, kwargs, 12001)


D_BASE = dict(sources=FOUR, channels=8, depth=4)
D_VARIANTS = {
    "v3-default-small": {},
    "v2-lstm-no-resample-no-normalize": dict(resample=False, normalize=False, lstm_layers=2,
                                             dconv_mode=0, gelu=False, rescale=0),
    "dconv-attn-lstm-both-relu-gate": dict(dconv_mode=3, dconv_attn=2, dconv_lstm=3, glu=False,
                                           context=0, norm_starts=2),
    "mono-no-rewrite-odd-strides": dict(rewrite=False, audio_channels=1, growth=1.5, stride=2,
                                        kernel_size=4, depth=3),
}


@pytest.mark.parametrize("variant", sorted(D_VARIANTS))
def test_demucs_matches_reference(variant):
    kwargs = {**D_BASE, **D_VARIANTS[variant]}
    _assert_eval_parity(ref_demucs.Demucs, Demucs, kwargs, 8001)


@pytest.mark.parametrize("length", [1, 100, 4097, 44100])
@pytest.mark.parametrize("resample", [True, False])
def test_demucs_valid_length_matches_reference(length, resample):
    kwargs = dict(sources=FOUR, channels=4, depth=3, resample=resample)
    ref, ours = _pair(ref_demucs.Demucs, Demucs, kwargs)
    assert ours.valid_length(length) == ref.valid_length(length)


def test_local_state_never_attends_to_itself_even_at_large_activations():
    """The reference sets each step's own logit to -100; offsetting it by -100 instead lets a
    query-key product above ~100 (loud, trained activations) attend to itself after all."""
    torch.manual_seed(0)
    ref = ref_demucs.LocalState(8, heads=4, nfreqs=0, ndecay=4)
    ours = LocalState(8, heads=4, ndecay=4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = 30 * _mix(8, 50)
    with torch.no_grad():
        expected = ref(x)
        assert (ours(x) - expected).abs().max().item() <= TOLERANCE * expected.abs().max().item()


def test_demucs_loads_legacy_norm_slot_keys():
    ref, ours = _pair(ref_demucs.Demucs, Demucs,
                      dict(sources=FOUR, channels=4, depth=2, dconv_mode=0))
    state = ref.state_dict()
    legacy = {re.sub(r"^(encoder|decoder)\.(\d+)\.3\.", r"\1.\2.2.", key): value
              for key, value in state.items()}
    assert legacy != state
    ours.load_state_dict(legacy, strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, state[key])


TRAIN_CASES = {
    "htdemucs": (ref_htdemucs.HTDemucs, HTDemucs, dict(HT_BASE, bottom_channels=16)),
    "htdemucs-wiener": (ref_htdemucs.HTDemucs, HTDemucs,
                        dict(HT_BASE, cac=False, wiener_iters=1, end_iters=1)),
    "hdemucs-wiener-train-iters": (ref_hdemucs.HDemucs, HDemucs,
                                   dict(H_BASE, hybrid=False, cac=False, wiener_iters=0,
                                        end_iters=1)),
    "hdemucs": (ref_hdemucs.HDemucs, HDemucs, dict(H_BASE, multi_freqs=[0.5],
                                                   multi_freqs_depth=1)),
    "demucs": (ref_demucs.Demucs, Demucs, dict(D_BASE, dconv_attn=2, dconv_lstm=3)),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_training_forward_and_gradients_match_reference(case):
    ref_cls, ours_cls, kwargs = TRAIN_CASES[case]
    ref, ours = _pair(ref_cls, ours_cls, kwargs)
    ref.train()
    ours.train()
    mix = _mix(kwargs.get("audio_channels", 2), 8820)
    target = _mix(1, 8820, seed=2)[:, None]
    losses = []
    for model in (ref, ours):
        out = model(mix)
        loss = (out - target).abs().mean()
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= TOLERANCE
    ref_grads = {name: p.grad for name, p in ref.named_parameters()}
    with_grad = 0
    for name, param in ours.named_parameters():
        if ref_grads[name] is None:
            assert param.grad is None or not param.grad.any(), name
            continue
        with_grad += 1
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        scale = max(1.0, ref_grads[name].abs().max().item())
        assert (param.grad - ref_grads[name]).abs().max().item() <= 1e-3 * scale, name
    assert with_grad > 0.9 * len(ref_grads)
    if isinstance(ours, HTDemucs):
        # Like the reference, training records the length it was trained on.
        assert ours.segment == ref.segment == Fraction(8820, 44100)


def test_training_step_changes_outputs_with_dropout():
    model = HTDemucs(**dict(HT_BASE, t_dropout=0.1, t_emb="cape", t_sin_random_shift=3))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mix = _mix(2, 4410, batch=1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(mix).square().mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)


def test_sparse_attention_with_all_allowed_pattern_equals_dense():
    dense_kwargs = dict(HT_BASE, t_layers=2)
    ref, dense = _pair(ref_htdemucs.HTDemucs, HTDemucs, dense_kwargs)
    # A diagonal band wider than any token count allows everything: same maths as dense.
    sparse = HTDemucs(**dense_kwargs, t_sparse_self_attn=True, t_sparse_cross_attn=True,
                      t_sparse_attn_window=10_000)
    state = {}
    for key, value in ref.state_dict().items():
        if ".in_proj_weight" in key or ".in_proj_bias" in key:
            prefix, kind = key.rsplit(".in_proj_", 1)
            for name, chunk in zip("qkv", value.chunk(3)):
                state[f"{prefix}.{name}.{kind}"] = chunk
        else:
            state[key.replace(".out_proj.", ".proj.")] = value
    sparse.load_state_dict(state, strict=True)
    ref.eval()
    sparse.eval()
    mix = _mix(2, 20000)
    with torch.no_grad():
        assert (sparse(mix) - ref(mix)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("kind", ["diag", "jmask", "random", "global"])
@pytest.mark.parametrize("queries,keys", [(37, 37), (20, 53), (64, 9)])
def test_sparse_patterns_match_reference(kind, queries, keys):
    expected = ref_transformer.get_elementary_mask(keys, queries, kind, 3, 4, 42, 0.7, "cpu")
    got = sparse_pattern(queries, keys, kind, 3, 4, 42, 0.7)
    assert torch.equal(got, expected)


def test_sparse_patterns_combine_by_union():
    both = sparse_pattern(30, 30, "diag_global", 1, 2, 0, 0.9)
    diag = sparse_pattern(30, 30, "diag", 1, 2, 0, 0.9)
    glob = sparse_pattern(30, 30, "global", 1, 2, 0, 0.9)
    assert torch.equal(both, diag | glob)
    assert not torch.equal(both, diag)


def test_auto_sparsity_is_refused_clearly():
    with pytest.raises(ModelError, match="auto_sparsity"):
        HTDemucs(**HT_BASE, t_sparse_self_attn=True, t_auto_sparsity=True)


def test_htdemucs_rejects_inputs_longer_than_its_segment():
    model = HTDemucs(**HT_BASE).eval()
    with pytest.raises(ValueError, match="longer than the training length"):
        model(_mix(2, 44101, batch=1))
    assert model.valid_length(1000) == 44100


def _defaults(function) -> list[tuple[str, object]]:
    params = list(inspect.signature(function).parameters.values())
    return [(p.name, list(p.default) if isinstance(p.default, (list, tuple)) else p.default)
            for p in params if p.name != "self"]


@pytest.mark.parametrize("ours,reference", [
    (Demucs, ref_demucs.Demucs),
    (HDemucs, ref_hdemucs.HDemucs),
    (HTDemucs, ref_htdemucs.HTDemucs),
    (CrossTransformerEncoder, ref_transformer.CrossTransformerEncoder),
])
def test_constructor_keywords_and_defaults_match_reference(ours, reference):
    assert _defaults(ours) == _defaults(reference.__init__)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_init_kwargs_rebuild_the_same_architecture(name):
    cls = ARCHITECTURES[name]
    small = {"Demucs": D_BASE, "HDemucs": H_BASE, "HTDemucs": HT_BASE}[name]
    model = cls(**small)
    assert model.init_kwargs["sources"] == FOUR
    assert model.init_kwargs["samplerate"] == 44100
    assert set(model.init_kwargs) == set(inspect.signature(cls).parameters)
    rebuilt = cls(**model.init_kwargs)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert (model.samplerate, model.audio_channels, model.sources, model.segment) == (
        44100, 2, FOUR, small.get("segment", 40))
