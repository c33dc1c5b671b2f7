"""The training loop (poly LR, LR groups, labelled set repetition, checkpoints, bitwise resume),
checkpoint loading and the three 2-D inference modes."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from helpers import NCLASS, TinySegmentationSet, deterministic, strict_json_loads, tiny_config, tiny_deeplab
from unimatch.data import RepeatDataset, ShardSampler
from unimatch.distributed import DistContext
from unimatch.engine import Trainer, build_optimizer, load_model_weights, poly_lr
from unimatch.errors import CheckpointError, ConfigError, DataError
from unimatch.inference import Predictor, evaluate_segmentation, predict, sliding_window_probs
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.report import EvalResult


def setup_module():
    deterministic()


# ---- learning rate ---------------------------------------------------------------------------
def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert poly_lr(0.004, 30, 40) == pytest.approx(0.004 * 0.25 ** 0.9)


def test_optimizer_is_sgd_with_a_head_group_at_lr_multi():
    cfg = tiny_config(lr=0.02, lr_multi=10.0)
    model = tiny_deeplab()
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    backbone, head = optimizer.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert backbone["lr"] == 0.02 and head["lr"] == pytest.approx(0.2)
    for group in (backbone, head):
        assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    single = build_optimizer(nn.Conv2d(1, 2, 1), cfg).param_groups
    assert len(single) == 1 and single[0]["lr"] == 0.02


class RecordingStep:
    """Wraps the trainer's step: records the group LRs it ran with, optionally fails at one call."""

    def __init__(self, trainer, fail_at=None):
        self.step, self.optimizer, self.fail_at = trainer.step, trainer.optimizer, fail_at
        self.lrs = []
        trainer.step = self

    def __call__(self, *args, **kwargs):
        if self.fail_at is not None and len(self.lrs) == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        self.lrs.append([group["lr"] for group in self.optimizer.param_groups])
        return self.step(*args, **kwargs)


def datasets(n_labeled=3, n_unlabeled=8, flip=True):
    return (TinySegmentationSet(n_labeled, "labeled", seed=1, flip=flip),
            TinySegmentationSet(n_unlabeled, "unlabeled", seed=2, flip=flip))


def segmentation_evaluator(cfg):
    """evaluate(model) -> EvalResult with mIoU/OA over a tiny validation set (the real inference)."""
    loader = DataLoader(TinySegmentationSet(3, "val", seed=3, flip=False), batch_size=1)

    def evaluate(model):
        cm = evaluate_segmentation(Predictor(model, cfg, torch.device("cpu")), loader, cfg.nclass, "original",
                                   cfg.crop_size)
        return EvalResult({"mIoU": cm.miou(), "OA": cm.overall_accuracy()})
    return evaluate


def make_trainer(cfg, save_dir, labeled, unlabeled, evaluate=None):
    model = tiny_deeplab(seed=cfg.seed)
    return Trainer(cfg, model, labeled, unlabeled, evaluate or segmentation_evaluator(cfg), DistContext(),
                   save_dir, progress=False)


def test_lr_follows_poly_per_iteration_for_both_groups(tmp_path):
    cfg = tiny_config(epochs=2, lr=0.01, lr_multi=10.0, method="fixmatch")
    labeled, unlabeled = datasets(n_unlabeled=6)
    trainer = make_trainer(cfg, tmp_path, labeled, unlabeled, evaluate=lambda m: EvalResult({"mIoU": 0.0}))
    recorder = RecordingStep(trainer)
    trainer.fit()
    total = 2 * (6 // 2)
    assert len(recorder.lrs) == total
    for it, (backbone_lr, head_lr) in enumerate(recorder.lrs):
        assert backbone_lr == pytest.approx(0.01 * (1 - it / total) ** 0.9)
        assert head_lr == pytest.approx(10 * backbone_lr)


# ---- the labelled set is repeated to the length of the unlabelled set ----------------------
def test_repeat_dataset_cycles_to_the_requested_length():
    base = list(range(3))
    repeated = RepeatDataset(base, 8)
    assert len(repeated) == 8 and [repeated[i] for i in range(8)] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert len(RepeatDataset(base, 2)) == 3  # never shorter than the labelled set


def test_an_epoch_is_one_pass_over_the_unlabelled_set(tmp_path):
    cfg = tiny_config(epochs=1, method="fixmatch")
    labeled, unlabeled = datasets(n_labeled=3, n_unlabeled=8)
    trainer = make_trainer(cfg, tmp_path, labeled, unlabeled, evaluate=lambda m: EvalResult({"mIoU": 0.0}))
    recorder = RecordingStep(trainer)
    trainer.fit()
    assert len(recorder.lrs) == 8 // cfg.batch_size
    assert labeled.reads == 8  # 3 labelled samples repeated to 8
    assert unlabeled.reads == 2 * 8  # images and CutMix partners


def test_dataset_smaller_than_a_batch_is_a_clear_error(tmp_path):
    cfg = tiny_config(batch_size=4)
    labeled, unlabeled = datasets(n_unlabeled=3)
    trainer = make_trainer(cfg, tmp_path, labeled, unlabeled)
    with pytest.raises(DataError, match="the unlabelled set of 3 samples is smaller than one batch of 4"):
        trainer.fit()
    trainer = make_trainer(tiny_config(batch_size=4, method="supervised"), tmp_path, labeled, None)
    with pytest.raises(DataError, match="the labelled set of 3 samples is smaller than one batch of 4"):
        trainer.fit()


def test_empty_labelled_set_is_a_clear_error(tmp_path):
    _, unlabeled = datasets()
    with pytest.raises(DataError, match="the labelled set is empty"):
        make_trainer(tiny_config(), tmp_path, TinySegmentationSet(0, "labeled"), unlabeled)


def test_semi_supervised_method_without_unlabelled_set_is_an_error(tmp_path):
    labeled, _ = datasets()
    with pytest.raises(ConfigError, match="needs an unlabelled set.*--method supervised"):
        make_trainer(tiny_config(), tmp_path, labeled, None)


# ---- run directory, checkpoints and bitwise resume -----------------------------------------
def model_state(save_dir):
    return torch.load(save_dir / "latest.pth", map_location="cpu", weights_only=False)["model"]


def assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metric_lines(save_dir):
    return [strict_json_loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(record):
    return {k: v for k, v in record.items() if k != "sec_per_iter"}


@pytest.mark.parametrize("num_workers, extensions", [(0, {}), (1, {}),
                                                     (0, {"dist_align": True, "class_thresh": True})])
def test_interrupted_run_resumes_bitwise(tmp_path, num_workers, extensions):
    """A run that stopped during epoch 2 and is started again on the same directory ends with
    exactly the weights, optimizer state and logged metrics of an uninterrupted run (also with the
    running state of the opt-in pseudo-label extensions)."""
    cfg = tiny_config(epochs=2, num_workers=num_workers, **extensions)
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    make_trainer(cfg, straight_dir, *datasets()).fit()

    crashed = make_trainer(cfg, resumed_dir, *datasets())
    RecordingStep(crashed, fail_at=6)  # 4 iterations per epoch: fails in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    crashed.writer.close()
    assert torch.load(resumed_dir / "latest.pth", weights_only=False)["epoch"] == 0
    torch.manual_seed(1234)  # the resumed process starts from another global RNG state
    resumed = make_trainer(cfg, resumed_dir, *datasets())
    recorder = RecordingStep(resumed)
    resumed.fit()
    assert len(recorder.lrs) == 4  # only epoch 2 was run again

    assert_same_state(model_state(straight_dir), model_state(resumed_dir))
    straight_opt = torch.load(straight_dir / "latest.pth", weights_only=False)["optimizer"]["state"]
    resumed_opt = torch.load(resumed_dir / "latest.pth", weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(straight_opt[k]["momentum_buffer"], resumed_opt[k]["momentum_buffer"])
               for k in straight_opt)
    assert [without_timing(r) for r in metric_lines(straight_dir)] == \
        [without_timing(r) for r in metric_lines(resumed_dir)]


def test_run_directory_files_and_best_checkpoint(tmp_path):
    scores = iter([0.5, 0.3, 0.7])
    cfg = tiny_config(epochs=3, method="supervised")
    labeled, _ = datasets(n_labeled=4, flip=False)
    trainer = make_trainer(cfg, tmp_path, labeled, None,
                           evaluate=lambda m: EvalResult({"mIoU": next(scores), "OA": 0.9}, table="table"))
    best_after = []
    original_save = trainer.save

    def save(name, state):
        original_save(name, state)
        if name == "latest.pth":
            best_after.append(torch.load(tmp_path / "best.pth", weights_only=False)["epoch"])
    trainer.save = save
    result = trainer.fit()
    for name in ("latest.pth", "best.pth", "config.yaml", "metrics.jsonl", "train.log"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())
    assert best_after == [0, 0, 2]  # kept only when the score improves
    assert result["best_score"] == 0.7
    records = metric_lines(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3] and [r["mIoU"] for r in records] == [0.5, 0.3, 0.7]
    assert {"loss", "loss_x", "iterations", "sec_per_iter"} <= set(records[0])
    best = torch.load(tmp_path / "best.pth", weights_only=False)
    assert best["metrics"]["mIoU"] == 0.7 and best["config"]["method"] == "supervised"
    fresh = tiny_deeplab(seed=99)
    load_model_weights(fresh, tmp_path / "best.pth")
    assert_same_state(fresh.state_dict(), trainer.model.state_dict())
    assert "method: supervised" in (tmp_path / "config.yaml").read_text()


def test_undefined_metrics_are_null_in_metrics_jsonl(tmp_path):
    cfg = tiny_config(epochs=1, method="supervised")
    labeled, _ = datasets(n_labeled=4)
    make_trainer(cfg, tmp_path, labeled, None,
                 evaluate=lambda m: EvalResult({"mIoU": 0.5, "precision": float("nan"),
                                                "hd95": float("inf")})).fit()
    (record,) = metric_lines(tmp_path)
    assert record["mIoU"] == 0.5 and record["precision"] is None and record["hd95"] is None


def test_eval_every_and_the_last_epoch(tmp_path):
    calls = []
    cfg = tiny_config(epochs=3, eval_every=2, method="supervised")
    labeled, _ = datasets(n_labeled=4)
    make_trainer(cfg, tmp_path, labeled, None,
                 evaluate=lambda m: calls.append(1) or EvalResult({"mIoU": float(len(calls))})).fit()
    assert len(calls) == 2  # after epoch 2 and after the last one
    assert [("mIoU" in r) for r in metric_lines(tmp_path)] == [False, True, True]


# ---- checkpoint loading -----------------------------------------------------------------------
def test_load_model_weights_accepts_official_checkpoints(tmp_path):
    source, target = tiny_deeplab(seed=1), tiny_deeplab(seed=2)
    official = {"model": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(official, tmp_path / "official.pth")
    assert load_model_weights(target, tmp_path / "official.pth")["epoch"] == 3
    assert_same_state(target.state_dict(), source.state_dict())
    # the natural-image scripts save the bare state dict of model.module
    torch.save(tiny_deeplab(seed=3).state_dict(), tmp_path / "bare.pth")
    load_model_weights(target, tmp_path / "bare.pth")
    assert_same_state(target.state_dict(), tiny_deeplab(seed=3).state_dict())


def test_load_model_weights_lists_missing_and_unexpected_keys(tmp_path):
    state = tiny_deeplab().state_dict()
    del state["classifier.bias"]
    state["aux.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"Missing: \['classifier.bias'\].*unexpected: \['aux.weight'\]"):
        load_model_weights(tiny_deeplab(), tmp_path / "bad.pth")
    other = tiny_deeplab(nclass=5).state_dict()
    torch.save({"model": other}, tmp_path / "nclass.pth")
    with pytest.raises(CheckpointError, match="shape mismatch.*classifier.weight"):
        load_model_weights(tiny_deeplab(), tmp_path / "nclass.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_model_weights(tiny_deeplab(), tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model_weights(tiny_deeplab(), tmp_path / "junk.pth")


def test_a_checkpoint_of_another_architecture_names_the_cause_before_the_keys(tmp_path):
    """An official ResNet-50 checkpoint under a ResNet-101 config (narrow trunks keep the file small)."""
    from unimatch.models.deeplabv3plus import DeepLabV3Plus

    narrow = dict(width=8, reduce_channels=8, decoder_channels=16)
    saved = DeepLabV3Plus(21, "resnet50", **narrow).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in saved.items()}}, tmp_path / "official.pth")
    with pytest.raises(CheckpointError) as error:
        load_model_weights(DeepLabV3Plus(19, "resnet101", **narrow), tmp_path / "official.pth",
                           config_source="pascal.yaml")
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'official.pth'} does not fit the model built from the config pascal.yaml (DeepLabV3Plus): "
        "the checkpoint's backbone is a ResNet-50 (layer3 blocks 0..5), the config says backbone: resnet101 "
        "(layer3 blocks 0..22); the checkpoint has 21 classes, the config says nclass: 19. Missing: "
        "['backbone.layer3.6.conv1.weight'")
    assert "shape mismatch: ['classifier.weight: checkpoint (21, 16, 1, 1)" in message


# ---- inference modes ------------------------------------------------------------------------------
class TileSensitiveNet(nn.Module):
    """Per-pixel logits plus a term from the mean of the whole input, so the result depends on how
    an image is tiled; records the shape of every input."""

    def __init__(self, nclass=NCLASS):
        super().__init__()
        torch.manual_seed(0)
        self.pixel = nn.Conv2d(3, nclass, 1)
        self.context = nn.Linear(3, nclass)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return self.pixel(x) + self.context(x.mean((2, 3)))[:, :, None, None]


def test_sliding_window_matches_the_official_truncated_windows():
    """Official: windows of crop_size at stride int(2/3 crop_size), rows/cols while < size,
    each cut at the border (not shifted back); softmax summed where windows overlap."""
    model = TileSensitiveNet().eval()
    image = torch.randn(1, 3, 50, 70)
    probs = sliding_window_probs(model, image, 32, NCLASS)
    rows, cols = [0, 21, 42], [0, 21, 42, 63]
    assert model.shapes == [(min(50, r + 32) - r, min(70, c + 32) - c) for r in rows for c in cols]
    expected = torch.zeros(1, NCLASS, 50, 70)
    with torch.no_grad():
        for r in rows:
            for c in cols:
                expected[:, :, r:r + 32, c:c + 32] += model(image[:, :, r:r + 32, c:c + 32]).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-6)


def test_center_crop_and_original_modes():
    model = TileSensitiveNet().eval()
    image = torch.randn(1, 3, 40, 36)
    scores, origin = predict(model, image, "center_crop", 32, NCLASS)
    assert origin == (4, 2) and scores.shape == (1, NCLASS, 32, 32)
    assert torch.allclose(scores, model(image[:, :, 4:36, 2:34]))
    scores, origin = predict(model, image, "original", 32, NCLASS)
    assert origin is None and torch.allclose(scores, model(image))
    with pytest.raises(DataError, match="img_7.*smaller than the 48x48 centre crop"):
        predict(model, image, "center_crop", 48, NCLASS, "img_7")
    with pytest.raises(ValueError, match="eval mode"):
        predict(model, image, "whole", 32, NCLASS)


@pytest.mark.parametrize("mode", ["original", "center_crop", "sliding_window"])
def test_evaluate_segmentation_scores_every_sample(mode):
    model = TileSensitiveNet().train()
    val = TinySegmentationSet(3, "val", size=40, seed=5, flip=False)
    predictor = Predictor(model, SimpleNamespace(mean=[0.5] * 3, std=[0.25] * 3, in_channels=3, amp="none"),
                          torch.device("cpu"))
    seen = []
    cm = evaluate_segmentation(predictor, DataLoader(val, batch_size=1), NCLASS, mode, 32,
                               on_prediction=lambda i, p, m: seen.append((i, p.shape)))
    expected = ConfusionMatrix(NCLASS)
    with torch.no_grad():
        for image, mask, _ in val:
            x = (image.float()[None] / 255 - 0.5) / 0.25
            if mode == "center_crop":
                x, mask = x[:, :, 4:36, 4:36], mask[4:36, 4:36]
            scores = sliding_window_probs(model, x, 32, NCLASS) if mode == "sliding_window" else model(x)
            expected.update(scores.argmax(1)[0], mask)
    assert torch.equal(cm.matrix, expected.matrix)
    size = 32 if mode == "center_crop" else 40
    assert seen == [(f"sample_{i}", (size, size)) for i in range(3)]
    assert model.training  # the mode is restored


def test_shard_sampler_splits_without_padding():
    assert list(ShardSampler(5, 0, 2)) == [0, 2, 4] and list(ShardSampler(5, 1, 2)) == [1, 3]
    assert len(ShardSampler(5, 1, 2)) == 2 and sorted(list(ShardSampler(7, 0, 3)) + list(ShardSampler(7, 1, 3))
                                                     + list(ShardSampler(7, 2, 3))) == list(range(7))
