"""Siamese change-detection models: shapes, FP on difference features, official checkpoint key names."""
from types import SimpleNamespace

import pytest
import torch

from unimatch.models import build_model
from unimatch.models.backbones import build_backbone, strip_wrappers
from unimatch.models.pspnet import PSPNet
from unimatch.models.siamese import SiameseDeepLabV3Plus, SiamesePSPNet


def bn_keys(prefix):
    return [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


# Non-backbone keys of the official remote-sensing checkpoints (model/semseg/deeplabv3plus.py and
# pspnet.py of LiheYoung/UniMatch, more-scenarios/remote-sensing), in state-dict order.
OFFICIAL_DEEPLAB_HEAD_KEYS = (
    [k for b in ("b0", "b1", "b2", "b3") for k in [f"head.{b}.0.weight"] + bn_keys(f"head.{b}.1")]
    + ["head.b4.gap.1.weight"] + bn_keys("head.b4.gap.2")
    + ["head.project.0.weight"] + bn_keys("head.project.1")
    + ["reduce.0.weight"] + bn_keys("reduce.1")
    + ["fuse.0.weight"] + bn_keys("fuse.1") + ["fuse.3.weight"] + bn_keys("fuse.4")
    + ["classifier.weight", "classifier.bias"])
OFFICIAL_PSPNET_HEAD_KEYS = (
    [k for i in (1, 2, 3, 4) for k in [f"head.conv5.0.conv{i}.0.weight"] + bn_keys(f"head.conv5.0.conv{i}.1")]
    + ["head.conv5.1.weight"] + bn_keys("head.conv5.2") + ["head.conv5.5.weight", "head.conv5.5.bias"])


def tiny(model_class):
    torch.manual_seed(0)
    if model_class is SiameseDeepLabV3Plus:
        return model_class(nclass=2, backbone="tiny", width=8, reduce_channels=8, decoder_channels=16)
    return model_class(nclass=2, backbone="tiny", width=8)


def pair_batch(n=2, size=64):
    return torch.rand(n, 6, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_class", [SiameseDeepLabV3Plus, SiamesePSPNet])
def test_output_shapes_and_fp_contract(model_class):
    model = tiny(model_class).eval()
    x = pair_batch(3, 32)
    with torch.no_grad():
        logits = model(x)
        clean, perturbed = model(x, need_fp=True)
        clean2, perturbed2 = model(x, need_fp=2)
    assert logits.shape == clean.shape == perturbed.shape == (3, 2, 32, 32)
    assert perturbed2.shape == (6, 2, 32, 32)
    torch.testing.assert_close(clean, logits)
    torch.testing.assert_close(clean2, logits)
    assert not torch.allclose(perturbed, logits)
    with pytest.raises(ValueError, match="2C"):
        model(torch.rand(1, 5, 32, 32))


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


@pytest.mark.parametrize("model_class, head_keys, backbone_dilation, official_params", [
    (SiameseDeepLabV3Plus, OFFICIAL_DEEPLAB_HEAD_KEYS, (False, False, True), "40.5M"),
    (SiamesePSPNet, OFFICIAL_PSPNET_HEAD_KEYS, (False, True, True), "46.7M"),
])
def test_official_checkpoint_keys_load_exactly(model_class, head_keys, backbone_dilation, official_params):
    model = model_class(nclass=2, backbone="resnet50", replace_stride_with_dilation=backbone_dilation)
    state = model.state_dict()
    backbone_keys = ["backbone." + k for k in build_backbone("resnet50").state_dict()]
    assert list(state) == backbone_keys + head_keys
    # "Total params" printed by the official WHU-CD ResNet-50 training logs
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M" == official_params
    official = {"model": {f"module.{k}": v.clone() for k, v in state.items()}}
    fresh = model_class(nclass=2, backbone="resnet50", replace_stride_with_dilation=backbone_dilation)
    fresh.load_state_dict(strip_wrappers(official), strict=True)


def test_build_from_config_and_param_groups():
    cfg = SimpleNamespace(model="siamese_pspnet", nclass=2, backbone="tiny", pretrained=None,
                          replace_stride_with_dilation=[False, True, True], deep_stem=True, in_channels=6, width=8,
                          multi_grid=False, dilations=[6, 12, 18], reduce_channels=48, decoder_channels=256)
    model = build_model(cfg)
    assert isinstance(model, SiamesePSPNet) and model.backbone.conv1[0].in_channels == 3
    backbone, head = model.param_groups()
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert {id(p) for p in backbone} == {id(p) for p in model.backbone.parameters()}
    cfg.model = "siamese_deeplabv3plus"
    assert isinstance(build_model(cfg), SiameseDeepLabV3Plus)


def test_single_image_pspnet_contract():
    torch.manual_seed(0)
    model = PSPNet(nclass=5, backbone="tiny", width=8).eval()
    with torch.no_grad():
        logits, perturbed = model(torch.rand(2, 3, 40, 40), need_fp=True)
    assert logits.shape == perturbed.shape == (2, 5, 40, 40)
