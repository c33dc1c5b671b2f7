"""Siamese change-detection models: FP on difference features, one backbone for both dates, official
checkpoints (the model contract itself: tests/test_model_contract.py)."""
from types import SimpleNamespace

import pytest
import torch

from unimatch.models import build_model
from unimatch.models.backbones import strip_wrappers
from unimatch.models.siamese import SiameseDeepLabV3Plus, SiamesePSPNet


def tiny(model_class):
    torch.manual_seed(0)
    if model_class is SiameseDeepLabV3Plus:
        return model_class(nclass=2, backbone="tiny", width=8, reduce_channels=8, decoder_channels=16)
    return model_class(nclass=2, backbone="tiny", width=8)


def pair_batch(n=2, size=64):
    return torch.rand(n, 6, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_class", [SiameseDeepLabV3Plus, SiamesePSPNet])
def test_input_must_hold_both_dates(model_class):
    with pytest.raises(ValueError, match="2C"):
        tiny(model_class)(torch.rand(1, 5, 32, 32))


def test_backbone_is_shared_and_run_once_per_date():
    model = tiny(SiameseDeepLabV3Plus).train()
    calls = []
    model.backbone.layer1.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model(pair_batch(2, 32))
    assert calls == [2, 2]  # A and B separately: BatchNorm statistics per date, as the official code
    x = pair_batch(2, 32)
    swapped = torch.cat([x[:, 3:], x[:, :3]], 1)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(swapped))  # |f(A) - f(B)| is symmetric


def capture_inputs(module):
    captured = []
    module.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().clone()))
    return captured


def assert_channel_dropout(features, clean_reference):
    """First half = clean difference features; second half = whole channels zeroed, the others x2."""
    n = clean_reference.shape[0]
    clean, dropped = features[:n], features[n:]
    torch.testing.assert_close(clean, clean_reference)
    zero = dropped.flatten(2).abs().amax(-1) == 0
    nonzero_clean = clean.flatten(2).abs().amax(-1) > 0
    assert (zero & nonzero_clean).any() and (~zero).any()
    kept = ~zero
    torch.testing.assert_close(dropped[kept], 2 * clean[kept])


def test_fp_stream_drops_channels_of_both_difference_features():
    model = tiny(SiameseDeepLabV3Plus).eval()
    low, high = capture_inputs(model.reduce), capture_inputs(model.head)
    x = pair_batch(2, 64)
    torch.manual_seed(3)
    with torch.no_grad():
        model(x, need_fp=True)
        features_a = model.backbone.base_forward(x[:, :3])
        features_b = model.backbone.base_forward(x[:, 3:])
    assert_channel_dropout(low[0], (features_a[0] - features_b[0]).abs())
    assert_channel_dropout(high[0], (features_a[-1] - features_b[-1]).abs())


def test_pspnet_fp_stream_drops_channels_of_the_difference_feature():
    model = tiny(SiamesePSPNet).eval()
    head_input = capture_inputs(model.head)
    x = pair_batch(2, 64)
    torch.manual_seed(4)
    with torch.no_grad():
        model(x, need_fp=True)
        difference = (model.backbone.base_forward(x[:, :3])[-1] - model.backbone.base_forward(x[:, 3:])[-1]).abs()
    assert_channel_dropout(head_input[0], difference)


@pytest.mark.parametrize("model_class, backbone_dilation, official_params", [
    (SiameseDeepLabV3Plus, (False, False, True), "40.5M"),
    (SiamesePSPNet, (False, True, True), "46.7M"),
])
def test_official_checkpoint_loads_exactly(model_class, backbone_dilation, official_params):
    """Size and loading of the official ResNet-50 models (their keys: tests/test_model_contract.py)."""
    model = model_class(nclass=2, backbone="resnet50", replace_stride_with_dilation=backbone_dilation)
    state = model.state_dict()
    # "Total params" printed by the official WHU-CD ResNet-50 training logs
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M" == official_params
    official = {"model": {f"module.{k}": v.clone() for k, v in state.items()}}
    fresh = model_class(nclass=2, backbone="resnet50", replace_stride_with_dilation=backbone_dilation)
    fresh.load_state_dict(strip_wrappers(official), strict=True)


def test_build_from_config_shares_a_three_channel_backbone():
    cfg = SimpleNamespace(model="siamese_pspnet", nclass=2, backbone="tiny", pretrained=None,
                          replace_stride_with_dilation=[False, True, True], deep_stem=True, in_channels=6, width=8,
                          multi_grid=False, dilations=[6, 12, 18], reduce_channels=48, decoder_channels=256)
    model = build_model(cfg)
    assert isinstance(model, SiamesePSPNet) and model.backbone.conv1[0].in_channels == 3
    cfg.model = "siamese_deeplabv3plus"
    assert isinstance(build_model(cfg), SiameseDeepLabV3Plus)

