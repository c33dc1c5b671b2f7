"""The medical UNet: official state-dict names and shapes, the feature-perturbation stream on every skip
(the contract itself: tests/test_model_contract.py)."""
import pytest
import torch

from unimatch.models.unet import UNet

TINY = (4, 8, 8, 16, 16)

# Written from LiheYoung/UniMatch more-scenarios/medical/model/unet.py (bilinear=False, so no
# conv1x1 in the up blocks): every ConvBlock is conv_conv = [Conv2d, BN, LeakyReLU, Dropout,
# Conv2d, BN, LeakyReLU].
OFFICIAL_CONV_BLOCKS = [
    "encoder.in_conv",
    "encoder.down1.maxpool_conv.1",
    "encoder.down2.maxpool_conv.1",
    "encoder.down3.maxpool_conv.1",
    "encoder.down4.maxpool_conv.1",
    "decoder.up1.conv",
    "decoder.up2.conv",
    "decoder.up3.conv",
    "decoder.up4.conv",
]
CONV_BLOCK_KEYS = [
    "conv_conv.0.weight", "conv_conv.0.bias",
    "conv_conv.1.weight", "conv_conv.1.bias", "conv_conv.1.running_mean", "conv_conv.1.running_var",
    "conv_conv.1.num_batches_tracked",
    "conv_conv.4.weight", "conv_conv.4.bias",
    "conv_conv.5.weight", "conv_conv.5.bias", "conv_conv.5.running_mean", "conv_conv.5.running_var",
    "conv_conv.5.num_batches_tracked",
]
OFFICIAL_OTHER_KEYS = [
    "decoder.up1.up.weight", "decoder.up1.up.bias",
    "decoder.up2.up.weight", "decoder.up2.up.bias",
    "decoder.up3.up.weight", "decoder.up3.up.bias",
    "decoder.up4.up.weight", "decoder.up4.up.bias",
    "decoder.out_conv.weight", "decoder.out_conv.bias",
]
OFFICIAL_KEYS = sorted([f"{b}.{k}" for b in OFFICIAL_CONV_BLOCKS for k in CONV_BLOCK_KEYS] + OFFICIAL_OTHER_KEYS)


def test_state_dict_keys_and_shapes_match_the_official_unet():
    state = UNet(in_chns=1, class_num=4).state_dict()
    assert sorted(state) == OFFICIAL_KEYS
    assert state["encoder.in_conv.conv_conv.0.weight"].shape == (16, 1, 3, 3)
    assert state["encoder.down4.maxpool_conv.1.conv_conv.0.weight"].shape == (256, 128, 3, 3)
    assert state["decoder.up1.up.weight"].shape == (256, 128, 2, 2)
    assert state["decoder.up1.conv.conv_conv.0.weight"].shape == (128, 256, 3, 3)
    assert state["decoder.up4.conv.conv_conv.4.weight"].shape == (16, 16, 3, 3)
    assert state["decoder.out_conv.weight"].shape == (4, 16, 3, 3)


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
