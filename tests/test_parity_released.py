"""Released-size parity: the official models at the hyperparameters of the released htdemucs,
htdemucs_6s, hdemucs_mmi and an mdx_extra member, with random weights (no downloads), saved in
the official `.th` layout and the official safetensors-export layout, loaded through
`stemsplit.models.checkpoint`, must give the official forward to max |diff| <= 1e-4 in float32.

The weights are rounded to half precision first (the released `.th` files store half-precision
state), so both layouts hold the same values and one forward per implementation suffices.
"""
import json
from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

import stemsplit.nn as snn
from stemsplit.models import checkpoint

pytestmark = pytest.mark.slow

FOUR = ["drums", "bass", "other", "vocals"]
SIX = FOUR + ["guitar", "piano"]

# The kwargs stored in the released HTDemucs packages (the `htdemucs` section of the official
# training config with the released overrides: depth 4, dconv_mode 3, bottom_channels 512, ...).
HTDEMUCS_RELEASED = dict(
    audio_channels=2, samplerate=44100, segment=Fraction(39, 5),
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=4, rewrite=True, multi_freqs=[], multi_freqs_depth=3, freq_emb=0.2, emb_scale=10,
    emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4,
    norm_groups=4, dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=1e-3, bottom_channels=512,
    t_layers=5, t_emb="sin", t_hidden_scale=4.0, t_heads=8, t_dropout=0.02, t_max_positions=10000,
    t_norm_in=True, t_norm_in_group=False, t_group_norm=False, t_norm_first=True, t_norm_out=True,
    t_max_period=10000.0, t_weight_decay=0.0, t_lr=None, t_layer_scale=True, t_gelu=True,
    t_weight_pos_embed=1.0, t_sin_random_shift=0, t_cape_mean_normalize=True, t_cape_augment=True,
    t_cape_glob_loc_scale=[5000.0, 1.0, 1.4], t_sparse_self_attn=False, t_sparse_cross_attn=False,
    t_mask_type="diag", t_mask_random_seed=42, t_sparse_attn_window=400, t_global_window=100,
    t_sparsity=0.95, t_auto_sparsity=False, t_cross_first=False, rescale=0.1,
)

# The `hdemucs` section of the official training config (Hybrid Demucs v3); the model segment is
# four times the training segment. The MDX 2021 models were trained with the `hybrid_old` padding.
HDEMUCS_RELEASED = dict(
    audio_channels=2, samplerate=44100,
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=6, rewrite=True, hybrid=True, hybrid_old=False, multi_freqs=[], multi_freqs_depth=3,
    freq_emb=0.2, emb_scale=10, emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1,
    context_enc=0, norm_starts=4, norm_groups=4, dconv_mode=1, dconv_depth=2, dconv_comp=4, dconv_attn=4,
    dconv_lstm=4, dconv_init=1e-3, rescale=0.1,
)

RELEASED = {
    "htdemucs": ("HTDemucs", dict(HTDEMUCS_RELEASED, sources=FOUR)),
    "htdemucs_6s": ("HTDemucs", dict(HTDEMUCS_RELEASED, sources=SIX)),
    "hdemucs_mmi": ("HDemucs", dict(HDEMUCS_RELEASED, sources=FOUR, segment=40)),
    "mdx_extra member": ("HDemucs", dict(HDEMUCS_RELEASED, sources=FOUR, segment=44, hybrid_old=True)),
}


def official_class(architecture):
    import demucs.hdemucs
    import demucs.htdemucs

    return {"HDemucs": demucs.hdemucs.HDemucs, "HTDemucs": demucs.htdemucs.HTDemucs}[architecture]


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_size_model_matches_official_through_both_layouts(tmp_path, name):
    architecture, kwargs = RELEASED[name]
    torch.manual_seed(1234)
    official = official_class(architecture)(**kwargs).eval()
    with torch.no_grad():
        for tensor in official.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())

    th_path = tmp_path / "package.th"
    args, init_kwargs = official._init_args_kwargs
    torch.save({
        "klass": type(official), "args": args, "kwargs": init_kwargs,
        "state": {key: value.half() for key, value in official.state_dict().items()},
        "training_args": {"model": architecture.lower(), "dset": {"segment": 11, "sources": kwargs["sources"]}},
    }, th_path)
    export_path = tmp_path / "export.safetensors"
    save_file({key: value.contiguous() for key, value in official.state_dict().items()}, str(export_path),
              metadata={"klass": f"{type(official).__module__}.{type(official).__name__}",
                        "args": json.dumps(list(args)),
                        "kwargs": json.dumps(checkpoint.encode_json(init_kwargs))})

    from_th = checkpoint.load_checkpoint(th_path)
    from_export = checkpoint.load_checkpoint(export_path)
    assert type(from_th) is type(from_export) is snn.ARCHITECTURES[architecture]
    for key, value in from_th.state_dict().items():
        assert torch.equal(value, from_export.state_dict()[key]), key
    assert from_th.segment == kwargs["segment"] and from_th.sources == kwargs["sources"]

    torch.manual_seed(5)
    mix = 0.5 * torch.randn(1, 2, 44100)  # 1 s; HTDemucs pads it to its 7.8 s training length
    with torch.no_grad():
        expected = official(mix)
        got = from_th(mix)
    assert got.shape == expected.shape == (1, len(kwargs["sources"]), 2, 44100)
    assert (got - expected).abs().max().item() <= 1e-4
