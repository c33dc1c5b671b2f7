"""The medical UNet: official state-dict names and shapes, the feature-perturbation stream on every skip
(the contract itself: tests/test_model_contract.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from official_keys import official_unet_shapes
from unimatch.config import load_config
from unimatch.engine import load_model_weights
from unimatch.models import build_model
from unimatch.models.unet import UNet

TINY = (4, 8, 8, 16, 16)
OFFICIAL_PARAMETERS = 1_813_764  # UNet(in_chns=1, class_num=4) of the official medical code


def _parameter_count(shapes: dict) -> int:
    """Trainable parameters among the keys: BatchNorm running statistics are buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape in shapes.items() if not key.endswith(buffers))


def test_state_dict_keys_and_shapes_match_the_official_unet():
    expected = official_unet_shapes()
    state = UNet(in_chns=1, class_num=4).state_dict()
    assert sorted(state) == sorted(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_parameter_count_is_the_official_one_at_the_acdc_config():
    from tasks.acdc.common import AcdcConfig
    from unimatch.paths import config_path

    assert _parameter_count(official_unet_shapes()) == OFFICIAL_PARAMETERS
    model = build_model(load_config(config_path("acdc", "acdc.yaml"), schema=AcdcConfig))
    assert isinstance(model, UNet)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS


def test_official_ddp_checkpoint_loads_with_every_key_used(tmp_path):
    """A ``{'model': ...}`` file with ``module.`` keys and the official shapes, as the released
    ACDC checkpoints, loads strictly and every tensor in it ends up in the model."""
    g = torch.Generator().manual_seed(0)
    official = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g))
                for k, shape in official_unet_shapes().items()}
    path = tmp_path / "unimatch_acdc.pth"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}}, path)
    model = UNet(1, 4)
    load_model_weights(model, path)
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(official)
    for key, value in official.items():
        assert torch.equal(loaded[key], value), key


def test_up_block_is_conv1x1_then_bilinear_upsample_with_aligned_corners():
    torch.manual_seed(0)
    block = UNet(1, 4, feature_channels=TINY).decoder.up1.eval()
    deep, skip = torch.rand(2, 16, 4, 6), torch.rand(2, 16, 8, 12)
    upsampled = F.interpolate(F.conv2d(deep, block.conv1x1.weight, block.conv1x1.bias), scale_factor=2,
                              mode="bilinear", align_corners=True)
    with torch.no_grad():
        assert torch.allclose(block(deep, skip), block.conv(torch.cat([skip, upsampled], dim=1)), atol=1e-6)


def test_checkpoint_saved_from_ddp_loads_after_stripping_module_prefix():
    torch.manual_seed(0)
    source = UNet(1, 4, feature_channels=TINY)
    checkpoint = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}}
    target = UNet(1, 4, feature_channels=TINY)
    target.load_state_dict({k[len("module."):]: v for k, v in checkpoint["model"].items()}, strict=True)
    x = torch.rand(1, 1, 32, 32)
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))


def test_bad_channel_list_is_refused():
    with pytest.raises(ValueError):
        UNet(1, 4, feature_channels=(4, 8, 16))


def _decoder_inputs(model, x):
    """Encoder features as the decoder receives them: [x0, x1, x2, x3, x4]."""
    seen = {}

    def grab(name):
        def hook(_module, args):
            seen[name] = args

        return hook

    handles = [getattr(model.decoder, f"up{i}").register_forward_pre_hook(grab(f"up{i}")) for i in range(1, 5)]
    try:
        out = model(x, need_fp=True)
    finally:
        for handle in handles:
            handle.remove()
    features = [seen["up4"][1], seen["up3"][1], seen["up2"][1], seen["up1"][1], seen["up1"][0]]
    return out, features


def test_fp_stream_drops_whole_channels_of_every_skip_and_bottleneck_and_keeps_clean_half():
    torch.manual_seed(0)
    model = UNet(1, 4, feature_channels=TINY).eval()  # eval: the encoder's own dropout is off
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        clean = model.encoder(x)
        reference_logits = model(x)
        (logits, logits_fp), features = _decoder_inputs(model, x)
    assert torch.allclose(logits, reference_logits, atol=1e-6)
    assert not torch.allclose(logits_fp, logits)  # the perturbation also acts in eval mode, as official
    for level, (seen, expected) in enumerate(zip(features, clean)):
        batch = x.shape[0]
        assert seen.shape[0] == 2 * batch, f"level {level}: clean and perturbed copies are not batched together"
        assert torch.equal(seen[:batch], expected), f"level {level}: clean half was altered"
        perturbed = seen[batch:]
        dropped = perturbed.flatten(2).abs().amax(dim=2) == 0  # (batch, channels)
        assert dropped.any(), f"level {level}: no channel dropped"
        assert (~dropped).any(), f"level {level}: every channel dropped"
        kept = ~dropped
        # kept channels are whole and rescaled by 1/(1-0.5); dropped ones are zero everywhere
        assert torch.allclose(perturbed[kept], 2 * expected[kept], atol=1e-6), f"level {level}"
        assert torch.all(expected[dropped].flatten(1).abs().amax(dim=1) > 0), f"level {level}: trivially zero"
