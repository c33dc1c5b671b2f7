"""UniMatch V2 as settings of the one step and loop: the EMA teacher, the flip partner, the
complementary-dropout strong forward, AdamW, evaluating student and EMA, resuming the EMA.

The step's loss is checked against the official V2 loop body written out here independently, on a
toy model whose train and eval modes differ (BatchNorm with non-trivial running statistics) and
whose complementary dropout is a pinned channel mask, so which model, mode, batch and forward
each prediction came from changes the numbers.
"""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import TinySegmentationSet, deterministic, strict_json_loads, tiny_config, tiny_deeplab
from test_method import MEAN, N_L, N_U, NCLASS, STD, RecordingPerturbation, ToyNet, batch, normalize
from unimatch.config import Config, load_config
from unimatch.distributed import DistContext
from unimatch.ema import ModelEMA, ema_ratio
from unimatch.engine import Trainer, build_optimizer, load_model_weights
from unimatch.errors import ConfigError
from unimatch.method import StepSettings, UniMatchStep
from unimatch.perturb import Normalizer, PerturbationSettings
from unimatch.report import EvalResult

THRESH = 0.7


def setup_module():
    deterministic()


class CompDropNet(nn.Module):
    """1x1 conv features, then a 1x1 conv head and BatchNorm. ``comp_drop=True`` multiplies the
    features of the first half of the batch by pinned per-(image, channel) masks of 0 and 2 and
    the second half by their complement ``2 - mask``; images listed in ``kept`` keep all their
    channels in both halves, as the official DPT's complementary dropout. Every call is recorded."""

    supports_comp_drop = True

    def __init__(self, seed=0, hidden=4):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Conv2d(3, hidden, 1)
        self.head = nn.Conv2d(hidden, NCLASS, 1)
        self.bn = nn.BatchNorm2d(NCLASS)
        with torch.no_grad():
            self.features.weight.mul_(4.0)
            self.head.weight.mul_(3.0)
            self.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, NCLASS) * (1 + seed))
            self.bn.running_var.fill_(2.0 + seed)
        self.comp_masks = torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 2.0, 0.0, 2.0], [2.0, 2.0, 0.0, 0.0]])[:, :hidden]
        self.kept = [1]
        self.calls = []

    def forward(self, x, comp_drop=False):
        self.calls.append({"n": x.shape[0], "comp_drop": comp_drop, "training": self.training,
                           "grad": torch.is_grad_enabled()})
        features = self.features(x)
        if comp_drop:
            half = x.shape[0] // 2
            first = self.comp_masks[:half].clone()
            second = 2.0 - first
            first[self.kept], second[self.kept] = 1.0, 1.0
            features = features * torch.cat((first, second)).view(2 * half, -1, 1, 1)
        return self.bn(self.head(features))


def v2_config(**changes):
    cfg = dataclasses.replace(Config(method="unimatch_v2", conf_thresh=THRESH, cutmix_p=1.0), **changes)
    cfg.validate()
    return cfg


def make_v2_step(seed=0, **changes):
    """The step under ``method: unimatch_v2``: a student and an EMA teacher with other weights."""
    cfg = v2_config(**changes)
    student, teacher = CompDropNet(seed).train(), CompDropNet(seed + 1).eval()
    perturbation = RecordingPerturbation(PerturbationSettings.from_config(cfg), seed)
    settings = StepSettings.from_config(cfg)
    step = UniMatchStep(student, settings, nn.CrossEntropyLoss(ignore_index=255), perturbation,
                        Normalizer(MEAN, STD, 3), NCLASS, teacher=teacher if settings.teacher == "ema" else None)
    return step, student, teacher, perturbation


def v2_batch(seed=0):
    """test_method's batch, with another padded region in each unlabelled image, so that a box
    that keeps its own image's ignore mask instead of its partner's changes the loss."""
    labelled, (weak, _), _ = batch(seed)
    ignore = torch.zeros(N_U, *weak.shape[-2:], dtype=torch.long)
    ignore[0, -5:] = 255         # bottom rows
    ignore[2, :, :6] = 255       # left columns; image 1 is not padded
    return labelled, (weak, ignore), None


def official_v2(student_before, teacher_before, perturbation, batches, variant=None):
    """The official V2 loop body, written out: pseudo-labels from the EMA's no-grad forward in eval
    mode; in each stream's CutMix box the batch flipped (the partner's own strong view of that
    stream, its label, confidence and ignore mask); ``model(x)`` alone; one forward of
    ``cat(s1, s2)`` with comp_drop; loss_s = CE summed over confident, valid pixels / valid
    pixels; loss = (loss_x + (loss_s1 + loss_s2) / 2) / 2. Returns (loss, parts, the student copy)
    so a test can compare gradients. ``variant`` names a deliberate deviation."""
    (x, y), (weak, ignore_w), _ = batches
    model, teacher = copy.deepcopy(student_before), copy.deepcopy(teacher_before)
    weak_u = weak.float() / 255
    with torch.no_grad():
        source = model if variant == "student_teacher" else teacher.train(variant == "teacher_in_train_mode")
        conf_w, label_w = source(normalize(weak_u)).softmax(1).max(1)
    model.train()
    pred_x = model(normalize(torch.cat((x, weak.float() / 255))))[:N_L] if variant == "x_with_weak" \
        else model(normalize(x))

    def partner(t):
        return t.roll(1, 0) if variant == "previous" else t.flip(0)

    views = []
    for (images, strong), box in zip(perturbation.views, perturbation.boxes):
        pasted = images.flip(0) if variant == "weak_pasted" else partner(strong)
        views.append(torch.where(box.unsqueeze(1), pasted, strong))
    strong_input = normalize(torch.cat(views))
    preds_s = (model(strong_input) if variant == "no_comp_drop" else model(strong_input, comp_drop=True)).chunk(2)
    losses = []
    for box, pred in zip(perturbation.boxes, preds_s):
        label = torch.where(box, partner(label_w), label_w)
        conf = torch.where(box, partner(conf_w), conf_w)
        ignore = ignore_w if variant == "own_ignore_in_box" else torch.where(box, partner(ignore_w), ignore_w)
        valid = ignore != 255
        losses.append((F.cross_entropy(pred, label, reduction="none") * ((conf >= THRESH) & valid)).sum()
                      / valid.sum().item())
    loss_x = F.cross_entropy(pred_x, y, ignore_index=255)
    loss = (loss_x + (losses[0] + losses[1]) / 2.0) / 2.0
    if variant == "v1_weights":
        loss = (loss_x + 0.25 * losses[0] + 0.25 * losses[1]) / 2.0
    mask_ratio = ((conf_w >= THRESH) & (ignore_w != 255)).sum() / (ignore_w != 255).sum()
    return loss, {"loss_x": loss_x.item(), "loss_s": ((losses[0] + losses[1]) / 2).item(),
                  "mask_ratio": mask_ratio.item()}, model


def test_unimatch_v2_preset_and_overrides():
    cfg = load_config(overrides=["method=unimatch_v2"])
    assert cfg.streams == (2, 0)
    assert [cfg.method_setting(k) for k in ("teacher", "ema", "comp_drop", "cutmix_partner", "optimizer",
                                            "weight_decay")] == ["ema", True, True, "flip", "adamw", 0.01]
    # an explicit key overrides the preset (the bi-temporal V2 script's student teacher, which
    # still keeps and evaluates an EMA)
    cfg = load_config(overrides=["method=unimatch_v2", "teacher=student", "weight_decay=0.05"])
    assert (cfg.method_setting("teacher"), cfg.method_setting("ema"), cfg.method_setting("weight_decay")) == \
        ("student", True, 0.05)
    assert StepSettings.from_config(cfg) == StepSettings(strong_views=2, fp_streams=0, conf_thresh=0.95,
                                                         cutmix_partner="flip", teacher="student", comp_drop=True)
    # the V2 parts one at a time on V1
    cfg = load_config(overrides=["teacher=ema", "cutmix_partner=flip", "optimizer=adamw"])
    assert (cfg.streams, cfg.method_setting("ema"), cfg.method_setting("comp_drop")) == ((2, 1), True, False)


@pytest.mark.parametrize("overrides, message", [
    (["method=unimatch_v2", "strong_views=1"], r"^comp_drop: .*needs strong_views 2 \(method unimatch_v2 has 1\)"),
    (["method=fixmatch", "comp_drop=true"], r"^comp_drop: .*needs strong_views 2"),
    (["teacher=ema", "ema=false"], r"^ema: false, but teacher: ema"),
    (["teacher=mean"], r"^teacher: 'mean' must be one of student, ema"),
    (["cutmix_partner=next"], r"^cutmix_partner: 'next' must be one of loader, previous, flip"),
    (["optimizer=adam"], r"^optimizer: 'adam' must be one of sgd, adamw"),
    (["partner_from_batch=true", "cutmix_partner=flip"], r"^partner_from_batch: true is cutmix_partner: previous"),
    (["method=unimatch_v2", "batch_size=1"], r"^cutmix_partner: .*batch_size must be at least 2"),
    (["method=unimatch_v2", "momentum=0.5"], r"^momentum: 0.5 is not read: AdamW"),
    (["ema_ratio=0.99"], r"^ema_ratio: 0.99 is not read: no EMA"),
    (["method=unimatch_v2", "ema_ratio=0"], r"^ema_ratio: must be in \(0, 1\), got 0"),
])
def test_v2_settings_that_do_not_fit_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


# ---- the step ---------------------------------------------------------------------------------------
def test_v2_loss_equals_the_official_loop_body():
    step, student, teacher, perturbation = make_v2_step()
    batches = v2_batch()
    before, teacher_before = copy.deepcopy(student), copy.deepcopy(teacher)
    student.calls, teacher.calls = [], []
    loss, stats = step(batches[0], batches[1])   # no partner batch: the partner is in the batch
    assert teacher.calls == [{"n": N_U, "comp_drop": False, "training": False, "grad": False}]
    assert student.calls == [
        {"n": N_L, "comp_drop": False, "training": True, "grad": True},          # model(x) alone
        {"n": 2 * N_U, "comp_drop": True, "training": True, "grad": True},       # cat(s1, s2), comp_drop
    ]
    for images, _ in perturbation.views:   # each stream perturbs the weak batch alone
        assert torch.equal(images, batches[1][0].float() / 255)
    expected, parts, copy_model = official_v2(before, teacher_before, perturbation, batches)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for key, value in parts.items():
        assert stats[key].item() == pytest.approx(value, rel=1e-6), key
    assert stats["loss_w_fp"] == 0.0
    loss.backward()
    expected.backward()
    for (name, p), q in zip(student.named_parameters(), copy_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    # the batch makes every ingredient matter: some pixels confident, boxes in every image
    assert 0.05 < stats["mask_ratio"] < 0.95
    assert all(box.flatten(1).any(1).all() for box in perturbation.boxes)
    for variant in ("student_teacher", "teacher_in_train_mode", "x_with_weak", "previous", "weak_pasted",
                    "no_comp_drop", "own_ignore_in_box", "v1_weights"):
        wrong, _, _ = official_v2(before, teacher_before, perturbation, batches, variant=variant)
        assert abs(wrong.item() - expected.item()) > 1e-4 * abs(expected.item()), variant


def test_a_student_teacher_under_v2_predicts_the_weak_view_in_its_own_no_grad_forward():
    """The bi-temporal V2 script: pseudo-labels from the student, no grad, in its current mode."""
    step, student, _, perturbation = make_v2_step(seed=2, teacher="student")
    batches = v2_batch(seed=2)
    before = copy.deepcopy(student)
    student.calls = []
    loss, _ = step(batches[0], batches[1])
    assert student.calls == [
        {"n": N_U, "comp_drop": False, "training": True, "grad": False},          # pseudo-labels
        {"n": N_L, "comp_drop": False, "training": True, "grad": True},
        {"n": 2 * N_U, "comp_drop": True, "training": True, "grad": True},
    ]
    expected, _, _ = official_v2(before, None, perturbation, batches, variant="student_teacher")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_an_ema_teacher_under_v1_labels_the_weak_views_and_the_partners():
    """teacher: ema on UniMatch V1: the partners' eval-mode forward and the weak pseudo-labels come
    from the EMA; the student still forwards cat(x, x_w) for its FP stream."""
    cfg = dataclasses.replace(Config(method="unimatch", conf_thresh=THRESH, cutmix_p=1.0), teacher="ema")
    cfg.validate()
    student, teacher = ToyNet().train(), ToyNet().eval()
    with torch.no_grad():
        teacher.conv.weight.mul_(-1.0)
    perturbation = RecordingPerturbation(PerturbationSettings.from_config(cfg), 0)
    step = UniMatchStep(student, StepSettings.from_config(cfg), nn.CrossEntropyLoss(ignore_index=255),
                        perturbation, Normalizer(MEAN, STD, 3), NCLASS, teacher=teacher)
    (x, y), (weak, ignore_w), (partner, ignore_m) = batches = batch(seed=4)
    before = copy.deepcopy(student)
    loss, stats = step(*batches)
    assert [c["training"] for c in teacher.calls] == [False, False] and [c["n"] for c in teacher.calls] == [N_U, N_U]
    assert [(c["n"], c["need_fp"]) for c in student.calls] == [(N_L + N_U, 1), (2 * N_U, False)]
    with torch.no_grad():
        conf_m, label_m = teacher(normalize(partner.float() / 255)).softmax(1).max(1)
        conf_w, label_w = teacher(normalize(weak.float() / 255)).softmax(1).max(1)
    preds, preds_fp = before(torch.cat((normalize(x), normalize(weak.float() / 255))), need_fp=1)
    views = [torch.where(box.unsqueeze(1), strong[N_U:], strong[:N_U])
             for (_, strong), box in zip(perturbation.views, perturbation.boxes)]
    preds_s = before(normalize(torch.cat(views))).chunk(2)

    def unsup(pred, label, conf, ignore):
        valid = ignore != 255
        return (F.cross_entropy(pred, label, reduction="none") * ((conf >= THRESH) & valid)).sum() / valid.sum()

    strong = [unsup(p, torch.where(b, label_m, label_w), torch.where(b, conf_m, conf_w), torch.where(b, ignore_m, ignore_w))
              for b, p in zip(perturbation.boxes, preds_s)]
    fp = unsup(preds_fp[N_L:], label_w, conf_w, ignore_w)
    expected = (F.cross_entropy(preds[:N_L], y, ignore_index=255) + 0.25 * sum(strong) + 0.5 * fp) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_comp_drop_is_refused_for_a_model_without_it():
    cfg = v2_config()
    with pytest.raises(ConfigError, match=r"^comp_drop: the model \(ToyNet\) has no complementary dropout"):
        UniMatchStep(ToyNet(), StepSettings.from_config(cfg), nn.CrossEntropyLoss(), None, None, NCLASS,
                     teacher=ToyNet())


# ---- the EMA ----------------------------------------------------------------------------------------
def test_ema_follows_the_official_rule_after_each_step():
    """ema = ema * r + student * (1 - r), r = min(1 - 1 / (it + 1), 0.996), for parameters and
    floating buffers; the integer buffer (num_batches_tracked) is the student's."""
    assert Config().ema_ratio == 0.996
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = ModelEMA(student, Config().ema_ratio)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    expected = {k: v.clone() for k, v in ema.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for iteration in (0, 1, 2, 3, 248, 249, 250, 1000):
        with torch.no_grad():   # a step of training: new weights and statistics
            for p in student.parameters():
                p.add_(torch.randn(p.shape, generator=g))
            student[1].running_mean.add_(torch.randn(4, generator=g))
            student[1].num_batches_tracked.add_(1)
        ema.update(student, iteration)
        r = min(1 - 1 / (iteration + 1), 0.996)
        assert ema_ratio(iteration, 0.996) == r
        for key, value in student.state_dict().items():
            if value.is_floating_point():
                expected[key] = expected[key] * r + value * (1 - r)
            else:
                expected[key] = value.clone()
            assert torch.equal(ema.model.state_dict()[key], expected[key]), (iteration, key)
    assert ema_ratio(0, 0.996) == 0.0 and ema_ratio(248, 0.996) < 0.996 == ema_ratio(249, 0.996)
    assert not ema.model.training


# ---- the loop: optimiser, EMA per iteration, evaluation of both, best.pth, resume --------------------
class TinyCompDropNet(nn.Module):
    """A small segmentation net with a backbone and a head (two LR groups) whose complementary
    dropout draws its masks from torch's global generator, as the official DPT."""

    supports_comp_drop = True

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, NCLASS, 1)

    def param_groups(self):
        return list(self.backbone.parameters()), list(self.head.parameters())

    def forward(self, x, comp_drop=False):
        features = self.backbone(x)
        if comp_drop:
            half = x.shape[0] // 2
            first = torch.bernoulli(torch.full((half, features.shape[1]), 0.5)) * 2.0
            second = 2.0 - first
            kept = torch.randperm(half)[:int(half * 0.5)]
            first[kept], second[kept] = 1.0, 1.0
            features = features * torch.cat((first, second)).view(2 * half, -1, 1, 1)
        return self.head(features)


def datasets():
    return TinySegmentationSet(3, "labeled", seed=1), TinySegmentationSet(8, "unlabeled", seed=2)


def pixel_accuracy(cfg):
    """evaluate(model): the share of correct pixels on a tiny validation set, as mIoU."""
    val = TinySegmentationSet(3, "val", seed=3, flip=False)
    normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)

    def evaluate(model):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            pred = model(normalizer(val.images.float() / 255)).argmax(1)
        model.train(was_training)
        valid = val.masks != 255
        return EvalResult({"mIoU": ((pred == val.masks) & valid).sum().item() / valid.sum().item()})
    return evaluate


def v2_trainer(save_dir, evaluate=None, **changes):
    cfg = tiny_config(method="unimatch_v2", lr=0.01, **changes)
    return Trainer(cfg, TinyCompDropNet(), *datasets(), evaluate or pixel_accuracy(cfg), DistContext(), save_dir,
                   progress=False)


def test_adamw_groups_betas_and_weight_decay():
    model = tiny_deeplab()
    optimizer = build_optimizer(model, tiny_config(method="unimatch_v2", lr=5e-6, lr_multi=40.0))
    assert type(optimizer) is torch.optim.AdamW
    backbone, head = optimizer.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for n, p in model.named_parameters() if "backbone" not in n}
    assert backbone["lr"] == 5e-6 and head["lr"] == pytest.approx(5e-6 * 40)
    for group in (backbone, head):
        assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.01
        assert group["eps"] == 1e-8 and not group["amsgrad"]
    explicit = build_optimizer(model, tiny_config(optimizer="adamw", weight_decay=0.05))
    assert all(g["weight_decay"] == 0.05 for g in explicit.param_groups)
    sgd = build_optimizer(model, tiny_config(method="unimatch_v2", optimizer="sgd"))
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["weight_decay"] == 1e-4


def test_the_trainer_updates_the_ema_after_every_step_with_the_global_iteration(tmp_path):
    trainer = v2_trainer(tmp_path, evaluate=lambda m: EvalResult({"mIoU": 0.0}))
    students, iterations = [], []
    update = trainer.ema.update

    def recording(student, iteration):
        students.append({k: v.clone() for k, v in student.state_dict().items()})
        iterations.append(iteration)
        update(student, iteration)
    trainer.ema.update = recording
    trainer.fit()
    assert iterations == list(range(8))   # 2 epochs x 4 iterations, 0-based, global
    # the partner is in the batch: one unlabelled stream, no partner loader
    assert trainer.unlabeled_set.reads == 8 * trainer.cfg.batch_size
    expected = None
    for iteration, state in zip(iterations, students):
        r = min(1 - 1 / (iteration + 1), 0.996)
        expected = {k: v.clone() for k, v in state.items()} if expected is None else \
            {k: expected[k] * r + v * (1 - r) if v.is_floating_point() else v for k, v in state.items()}
    for key, value in trainer.ema.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not trainer.ema.model.training


def test_student_and_ema_are_evaluated_and_best_pth_holds_the_better(tmp_path):
    scores = {"student": iter([0.5, 0.3, 0.4]), "ema": iter([0.4, 0.6, 0.55])}
    saved = {}
    trainer = None

    def evaluate(model):
        return EvalResult({"mIoU": next(scores["ema" if model is trainer.ema.model else "student"]), "OA": 0.9})
    trainer = v2_trainer(tmp_path, evaluate=evaluate, epochs=3)
    original_save = trainer.save

    def save(name, state):
        original_save(name, state)
        if name == "best.pth":
            saved[state["epoch"]] = {k: v.clone() for k, v in state["model"].items()}
    trainer.save = save
    result = trainer.fit()
    records = [strict_json_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["mIoU"], r["ema/mIoU"], r["ema/OA"]) for r in records] == [(0.5, 0.4, 0.9), (0.3, 0.6, 0.9),
                                                                          (0.4, 0.55, 0.9)]
    assert sorted(saved) == [0, 1]   # epoch 1: the student's 0.5, epoch 2: the EMA's 0.6
    best = torch.load(tmp_path / "best.pth", weights_only=False)
    assert best["weights"] == "ema" and best["epoch"] == 1 and best["metrics"]["mIoU"] == 0.6
    assert result["best_score"] == 0.6
    latest = torch.load(tmp_path / "latest.pth", weights_only=False)
    assert latest["best_by_weights"] == {"student": 0.5, "ema": 0.6}
    assert set(latest["model_ema"]) == set(latest["model"])
    fresh = TinyCompDropNet(seed=9)
    load_model_weights(fresh, tmp_path / "best.pth")   # evaluate/predict need no other argument
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[1][key]), key


class Crash:
    """Wraps the trainer's step; raises at call ``fail_at`` (a run killed mid-epoch)."""

    def __init__(self, trainer, fail_at=None):
        self.step, self.fail_at, self.calls = trainer.step, fail_at, 0
        trainer.step = self

    def __call__(self, *args, **kwargs):
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        return self.step(*args, **kwargs)


@pytest.mark.parametrize("changes", [{}, {"teacher": "student"}])
def test_an_interrupted_v2_run_resumes_bitwise_with_its_ema_and_adamw_state(tmp_path, changes):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    v2_trainer(straight, **changes).fit()
    crashed = v2_trainer(resumed, **changes)
    Crash(crashed, fail_at=6)   # 4 iterations per epoch: in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    crashed.writer.close()
    torch.manual_seed(1234)   # the resumed process starts from another global RNG state (comp_drop draws)
    again = v2_trainer(resumed, **changes)
    recorder = Crash(again)
    again.fit()
    assert recorder.calls == 4
    a, b = (torch.load(d / "latest.pth", weights_only=False) for d in (straight, resumed))
    for part in ("model", "model_ema"):
        assert list(a[part]) == list(b[part])
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[key], b["optimizer"]["state"][index][key]), (index, key)
    lines = [[{k: v for k, v in strict_json_loads(line).items() if k != "sec_per_iter"}
              for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, resumed)]
    assert lines[0] == lines[1] and "ema/mIoU" in lines[0][0]
    assert not math.isnan(lines[0][-1]["ema/mIoU"])


def test_v1_runs_keep_no_ema_and_their_checkpoints_say_student(tmp_path):
    cfg = tiny_config(epochs=1, method="fixmatch")
    trainer = Trainer(cfg, tiny_deeplab(), *datasets(), lambda m: EvalResult({"mIoU": 0.5}), DistContext(),
                      tmp_path, progress=False)
    assert trainer.ema is None and trainer.step.teacher is None
    trainer.fit()
    assert "model_ema" not in torch.load(tmp_path / "latest.pth", weights_only=False)
    assert torch.load(tmp_path / "best.pth", weights_only=False)["weights"] == "student"
    record = strict_json_loads((tmp_path / "metrics.jsonl").read_text())
    assert not any(key.startswith("ema/") for key in record)
