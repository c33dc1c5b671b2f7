"""Opt-in extensions of the method for the CPU demos (off in every official config): distribution
alignment and the supervised warm-up. Expected values are worked out by hand in the tests."""
import pytest
import torch
import torch.nn as nn

from helpers import TinySegmentationSet, tiny_config
from test_method import ToyNet, batch, make_step, normalize
from unimatch.align import DistributionAlignment
from unimatch.config import load_config
from unimatch.distributed import DistContext
from unimatch.engine import Trainer
from unimatch.errors import ConfigError
from unimatch.paths import config_path
from unimatch.report import EvalResult


def test_distribution_alignment_by_hand():
    align = DistributionAlignment(2, momentum=0.99)
    mask = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 255]])   # labelled: 90% class 0, 10% class 1
    align.observe_labels(mask)
    prob = torch.tensor([0.99, 0.01]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    align.observe_predictions(prob, torch.ones(1, 2, 2, dtype=torch.bool))   # model: 99% / 1%
    out = align(torch.tensor([0.8, 0.2]).view(1, 2, 1, 1))
    # [0.8 * 0.9 / 0.99, 0.2 * 0.1 / 0.01] = [0.72727, 2.0], normalised by 2.72727
    assert out.flatten().tolist() == pytest.approx([0.26667, 0.73333], abs=1e-4)
    # running means: a second batch of class 1 only moves the label prior by 1 - momentum
    align.observe_labels(torch.ones(1, 4, dtype=torch.long))
    assert align.label_prior.tolist() == pytest.approx([0.891, 0.109])
    # invalid (padded) pixels do not enter the model prior
    prob2 = torch.stack([torch.tensor([[0.5, 0.0]]), torch.tensor([[0.5, 1.0]])]).unsqueeze(0)  # (1, 2, 1, 2)
    align.observe_predictions(prob2, torch.tensor([[[True, False]]]))
    assert align.model_prior.tolist() == pytest.approx([0.99 * 0.99 + 0.01 * 0.5, 0.99 * 0.01 + 0.01 * 0.5])


def test_step_with_alignment_uses_the_labelled_frequencies():
    step, _, _ = make_step(dist_align=True)
    step(*batch())
    (_, y), _, _ = batch()
    known = y[y != 255]
    expected = torch.bincount(known, minlength=3).float() / known.numel()
    assert torch.allclose(step.align.label_prior, expected)
    off, _, _ = make_step()
    assert off.align is None


def test_labelled_term_is_the_loss_with_unlabelled_weights_zero():
    step, model, _ = make_step(sup_weight=2.0)
    (x, y), _, _ = batch()
    loss, stats = step.labelled_term((x, y))
    expected = nn.CrossEntropyLoss(ignore_index=255)(model(normalize(x)), y)   # train mode, as the step
    # sup_weight 2 / loss_divisor 2: the plain labelled loss, as the supervised baseline trains
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["loss_s"] == 0.0 and stats["mask_ratio"] == 0.0


def test_warmup_epochs_read_no_unlabelled_data_then_the_method_runs(tmp_path):
    cfg = tiny_config(method="fixmatch", epochs=2, crop_size=16, sup_warmup_epochs=1)
    labeled = TinySegmentationSet(4, "labeled", size=16, seed=1)
    unlabeled = TinySegmentationSet(8, "unlabeled", size=16, seed=2)
    model = ToyNet()
    trainer = Trainer(cfg, model, labeled, unlabeled, lambda m: EvalResult({"mIoU": 0.0}), DistContext(),
                      tmp_path, progress=False)
    trainer.fit()
    iterations = len(unlabeled) // cfg.batch_size
    # epoch 1: one labelled forward per iteration; epoch 2: FixMatch's three forwards, two unlabelled streams
    assert len(model.calls) == iterations * 1 + iterations * 3
    assert unlabeled.reads == 2 * iterations * cfg.batch_size


def test_extensions_are_off_in_every_official_config():
    for task, name in (("natural", "pascal.yaml"), ("natural", "cityscapes.yaml"), ("natural", "coco.yaml"),
                       ("change_detection", "whu.yaml"), ("change_detection", "levir.yaml"), ("acdc", "acdc.yaml")):
        text = config_path(task, name).read_text()
        for key in ("sup_warmup_epochs", "dist_align", "class_thresh", "sup_weight", "pseudo_label_accuracy",
                    "partner_from_batch"):
            assert key not in text, (name, key)


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="sup_warmup_epochs"):
        load_config(None, ["epochs=2", "sup_warmup_epochs=3"])


def test_partner_from_batch_needs_two_images_per_batch():
    """With one image per batch the partner would be the image itself."""
    with pytest.raises(ConfigError, match="partner_from_batch"):
        load_config(None, ["batch_size=1", "partner_from_batch=true"])
    assert load_config(None, ["batch_size=2", "partner_from_batch=true"]).partner_from_batch


def test_class_adaptive_thresholds_by_hand():
    from unimatch.align import ClassAdaptiveThreshold

    adaptive = ClassAdaptiveThreshold(3, conf_thresh=0.9)
    labelled = torch.tensor([[0, 0, 1, 2, 255]])                  # prior 0.5 / 0.25 / 0.25
    pseudo = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 0]])
    conf = torch.tensor([[.95, .95, .95, .5, .95, .5, .5, .5, .99]])
    valid = torch.tensor([[True] * 8 + [False]])                 # the last pixel is padding
    adaptive.observe(labelled, pseudo, conf, valid)
    # confident share of the 8 valid pixels: 3/8, 1/8, 0 -> effect 0.75, 0.5, 0 -> beta 1, 2/3, 0
    # threshold 0.9 * beta / (2 - beta): 0.9, 0.9 * (2/3) / (4/3) = 0.45, 0
    assert adaptive.thresholds().tolist() == pytest.approx([0.9, 0.45, 0.0])
    # a class confident more often than it occurs is capped at "learnt"
    adaptive.confident_share = torch.tensor([0.9, 0.5, 0.1])
    assert adaptive.thresholds().tolist() == pytest.approx([0.9, 0.9, 0.9 * 0.4 / 1.6])


def test_unsup_loss_keeps_pixels_above_their_class_threshold():
    step, _, _ = make_step()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]).T.reshape(1, 2, 2, 2)
    logits = torch.cat((logits, torch.zeros(1, 1, 2, 2)), 1)    # 3 classes as the toy step
    pseudo = torch.tensor([[[0, 1], [0, 1]]])
    conf = torch.tensor([[[0.8, 0.6], [0.4, 0.7]]])
    ignore = torch.zeros(1, 2, 2, dtype=torch.long)
    thresholds = torch.tensor([0.5, 0.65, 0.9])
    # kept: pixel 0 (class 0, 0.8 >= 0.5) and pixel 3 (class 1, 0.7 >= 0.65); mean over all 4 valid pixels
    ce = torch.nn.functional.cross_entropy(logits, pseudo, reduction="none").flatten()
    expected = (ce[0] + ce[3]) / 4
    assert step.unsup_loss(logits, pseudo, conf, ignore, thresholds).item() == pytest.approx(expected.item())
