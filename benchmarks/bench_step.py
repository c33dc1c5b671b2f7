"""Speed of one full training iteration, and of the batched strong views.

``iteration`` (default): one UniMatch iteration (``Trainer.train_iteration``: the real
``UniMatchStep``, backward, SGD step, i.e. the code path of ``Trainer.fit``) of a scenario at the
official shapes, for each speed variant. Every variant runs in a fresh process (so peak RSS and
the allocator setting are its own); the variants are alternated round by round (A B C A B C ...),
so a load change on a shared machine hits them alike. Reported per variant: s/iter (median, min,
max over all timed iterations), iterations per second, the process's CPU seconds per iteration
(less disturbed than wall time when other jobs share the cores), peak RSS (CPU) or peak GPU memory, the
load average before each process, and on CUDA achieved TFLOP/s and the share of the device's peak
(FLOPs counted once with ``FlopCounterMode``).

    python benchmarks/bench_step.py --scenario natural --variants fp32 recommended --rounds 3
    python benchmarks/bench_step.py --scenario acdc --ref-root /tmp/main-ref --variants main fp32_fast

``--ref-root DIR`` adds the variant ``main``: the same iteration with the ``unimatch`` package of
another checkout (e.g. ``git worktree add /tmp/main-ref 630649b``), at its defaults.

UniMatch V2 (``natural_v2``: DPT with ViT-S, crop 518, batch 4, the official ``pascal.yaml`` of V2;
``change_detection_v2``: siamese DPT with ViT-B, crop 252, batch 8, the official remote-sensing
``whu.yaml``): our iteration (``method: unimatch_v2``: EMA teacher, flip CutMix partner,
complementary dropout, AdamW, the EMA update inside ``train_iteration``) and, with
``--official PATH`` (a checkout of LiheYoung/UniMatch-V2), the variant ``official_v2``: the body
of the official training loop on the official model (random weights), in fp32 (it has no other
precision), timed the same way. ``--batch-size`` lowers the batch for a slow machine (to 2 at
least: V2's CutMix partner is the flipped batch).

    python benchmarks/bench_step.py --scenario natural_v2 --official /path/to/UniMatch-V2 \
        --variants official_v2 fp32 channels_last --batch-size 2 --threads 2

``views``: the official per-sample PIL strong-view pipeline against our batched
``StrongPerturbation`` (``--part views``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (config file, overrides) at the official settings; no pretrained file (random weights run alike)
SCENARIOS = {
    "natural": ("configs/natural/pascal.yaml", {"backbone": "resnet50", "batch_size": 2}),
    "change_detection": ("configs/change_detection/whu.yaml", {"batch_size": 2, "in_channels": 6}),
    "acdc": ("configs/acdc/acdc.yaml", {"batch_size": 12}),
    # UniMatch V2 at the official V2 settings (its configs/pascal.yaml and remote-sensing/configs/whu.yaml)
    "natural_v2": ("configs/natural/pascal.yaml",
                   {"method": "unimatch_v2", "model": "dpt", "backbone": "dinov2_small", "crop_size": 518,
                    "batch_size": 4, "lr": 5e-6, "lr_multi": 40.0}),
    # the official bi-temporal script predicts the pseudo-labels with the student (and keeps an EMA)
    "change_detection_v2": ("configs/change_detection/whu.yaml",
                            {"method": "unimatch_v2", "teacher": "student", "model": "siamese_dpt",
                             "backbone": "dinov2_base", "crop_size": 252, "batch_size": 8, "in_channels": 6,
                             "lr": 5e-6, "lr_multi": 40.0}),
}
# the V2 scenarios' official training script: (folder of the UniMatch-V2 checkout, its teacher)
OFFICIAL_V2 = {"natural_v2": ("", "ema"), "change_detection_v2": ("remote-sensing", "student")}
POLY_TOTAL = 10_000   # the poly schedule's length in the timed iterations (any length costs the same)
# speed settings per variant; "main" is the reference checkout at its own defaults
VARIANTS = {
    "main": {},
    "fp32": {"amp": "none", "channels_last": False, "cpu_allocator": "default", "compile": False},
    "channels_last": {"amp": "none", "channels_last": True, "cpu_allocator": "default", "compile": False},
    "reuse": {"amp": "none", "channels_last": False, "cpu_allocator": "reuse", "compile": False},
    "fp32_fast": {"amp": "none", "channels_last": True, "cpu_allocator": "reuse", "compile": False},
    "bf16": {"amp": "bf16", "channels_last": False, "cpu_allocator": "default", "compile": False},
    "recommended": {"amp": "bf16", "channels_last": True, "cpu_allocator": "reuse", "compile": False},
    "compile": {"amp": "none", "channels_last": True, "cpu_allocator": "reuse", "compile": True},
    "recommended_compile": {"amp": "bf16", "channels_last": True, "cpu_allocator": "reuse", "compile": True},
    # the official UniMatch V2 loop body (--official), fp32, the allocator at its default
    "official_v2": {"official": True},
}
# opt-in, not exact: the CutMix partner and its pseudo-label from the same batch (one forward less)
for _name in ("fp32_fast", "recommended"):
    VARIANTS[f"{_name}_batch_partner"] = dict(VARIANTS[_name], partner_from_batch=True)
# environment of a variant's process (OpenMP reads it when torch loads); the rest inherit ours
VARIANT_ENV = {"recommended_passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
VARIANTS["recommended_passive"] = VARIANTS["recommended"]
# dense peak TFLOP/s (fp32 without TF32, bf16) of devices we quote a share for
DEVICE_PEAK_TFLOPS = {"H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0)}


# ---- one variant, in its own process ---------------------------------------------------------
def scenario_config(name: str, settings: dict, overrides: dict | None = None):
    """The scenario's official YAML read into the core ``Config`` (task-only keys, such as ACDC's
    intensity normalisation, do not shape an iteration), so the benchmark needs no task packages.
    The scenario's model keys that its model does not read (a V1 file's ResNet keys under a V2
    model) are dropped; ``overrides`` (``--batch-size``, ``--set``) come last."""
    import dataclasses

    import yaml

    from unimatch.config import Config, load_config
    from unimatch.models import model_keys_not_read
    path, scenario = SCENARIOS[name]
    known = {f.name for f in dataclasses.fields(Config)}
    official = {k: v for k, v in yaml.safe_load((REPO / path).read_text()).items() if k in known}
    values = {**official, **scenario, **{k: v for k, v in settings.items() if k in known}, **(overrides or {}),
              "pretrained": None, "num_workers": 0, "log_every": 0}
    for key in model_keys_not_read(values["model"]):
        values.pop(key, None)
    return load_config(None, **values)


def random_batches(cfg, device):
    """Labelled, unlabelled and partner batches that follow the data contract (uint8 images, or
    float [0, 1] MRI; labels; ignore masks with a padded strip)."""
    import torch
    g = torch.Generator().manual_seed(0)
    b, c, s = cfg.batch_size, cfg.in_channels, cfg.crop_size

    def image():
        if c == 1:
            return torch.rand(b, c, s, s, generator=g)
        return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)

    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -s // 8:] = 255
    labels = torch.randint(0, cfg.nclass, (b, s, s), generator=g)
    return [(image(), labels), (image(), ignore), (image(), ignore.clone())]


def run_variant(args) -> dict:
    settings = json.loads(args.settings)
    import unimatch  # noqa: F401  (sets OpenMP's wait policy before torch loads, for every variant alike)
    if "cpu_allocator" in settings:
        from unimatch.precision import configure_cpu_allocator
        configure_cpu_allocator(settings["cpu_allocator"])  # first, as the entry points do
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = scenario_config(args.scenario, settings, json.loads(args.overrides))
    batches = random_batches(cfg, device)
    with tempfile.TemporaryDirectory() as save_dir:
        if settings.get("official"):
            iteration, prepare, info = official_v2_iteration(cfg, args.scenario, Path(args.official), batches, device)
        else:
            iteration, prepare, info = our_iteration(cfg, settings, batches, device, save_dir)
        info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(unset)")
        info["gomp_spincount"] = os.environ.get("GOMP_SPINCOUNT", "(unset)")
        return dict(info, **time_iterations(args, iteration, prepare, device))


def time_iterations(args, iteration, prepare, device) -> dict:
    """``args.warmup`` untimed iterations (their seconds kept: the first one compiles), then
    ``args.iters`` timed ones; ``prepare`` runs before each, untimed (what a loader would hand over)."""
    import resource

    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warmup_times = []
    for _ in range(args.warmup):
        prepare()
        start = time.perf_counter()
        iteration()
        sync()
        warmup_times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(args.iters):
        prepare()
        start, cpu_start = time.perf_counter(), time.process_time()
        iteration()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    result = {"times": times, "cpu_times": cpu_times, "warmup_times": warmup_times,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        prepare()
        with counter:
            iteration()
        result["flops"] = counter.get_total_flops()
    if args.profile:
        prepare()
        result["profile"] = profile_ops(iteration, sync)
    return result


def our_iteration(cfg, settings: dict, batches, device, save_dir):
    """(iteration, prepare, info) of our ``Trainer``: the poly LR, then ``train_iteration`` (step,
    backward, optimizer step, V2's EMA update), as ``Trainer.train_epoch`` runs them."""
    import itertools

    from torch.utils.data import TensorDataset

    from unimatch.distributed import DistContext, wrap_model
    from unimatch.engine import Trainer
    from unimatch.models import build_model

    ctx = DistContext(0, 1, 0, device)
    model = build_model(cfg)
    if "channels_last" in settings:
        from unimatch.precision import prepare_model
        model = prepare_model(model, cfg.channels_last, cfg.compile, device)
    model = wrap_model(model, ctx)
    trainer = Trainer(cfg, model, TensorDataset(*batches[0]), TensorDataset(*batches[1]), lambda m: None, ctx,
                      save_dir, progress=False)
    device_batches = [trainer.to_device(list(b)) for b in batches]
    counter = itertools.count()
    info = {}
    try:   # what the config's amp ran as here (bf16 falls back to fp32 on a CPU without native bf16)
        from unimatch.precision import autocast_dtype
        info["autocast"] = str(autocast_dtype(cfg.amp, device) or "fp32").replace("torch.", "")
    except ImportError:
        info["autocast"] = "fp32"

    def iteration():
        if hasattr(trainer, "train_iteration"):
            i = next(counter)
            trainer.set_lr(i, POLY_TOTAL)
            return trainer.train_iteration(device_batches, i)
        # the reference checkout's Trainer.fit body
        loss, stats = trainer.step(*device_batches, autocast=trainer.autocast)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        return stats
    return iteration, lambda: None, info


def official_v2_iteration(cfg, scenario: str, root: Path, batches, device):
    """(iteration, prepare, info) of the official UniMatch V2 training loop's body, on its own model.

    Imports ``model.semseg.dpt`` from the checkout ``root`` (``remote-sensing/`` for change
    detection) and builds its DPT with random weights and the head widths of its model table;
    no DDP or SyncBatchNorm (one process; the DPT has no BatchNorm). ``prepare`` hands over what
    its loader would: normalised weak and strong views (here the weak view and a flipped one;
    the strong augmentation runs in the loader's workers there, and is not timed) and CutMix
    boxes. The timed iteration is, as there: the teacher's no-grad forward of the weak batch (the
    EMA, or the student for the bi-temporal script, which then calls ``train()``), the in-place
    CutMix pastes of the flipped batch, ``model(x)``, ``model(cat(s1, s2), comp_drop=True)``, the
    labelled and the two masked unlabelled losses, backward, the AdamW step, the logged values
    (``.item()``), the poly LR and the EMA update over parameters and buffers. The CutMix pastes
    of a bi-temporal pair run per image of the pair, as there."""
    import copy
    import itertools

    import torch
    import torch.nn as nn

    from unimatch.models.dpt import HEAD_WIDTHS
    from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation

    folder, teacher_kind = OFFICIAL_V2[scenario]
    if not root.is_dir():
        raise SystemExit(f"--official {root}: no such folder (a checkout of LiheYoung/UniMatch-V2)")
    sys.path.insert(0, str(root / folder))
    from model.semseg.dpt import DPT as OfficialDPT
    if device.type == "cpu":   # the official code moves its dropout masks with .cuda()
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    features, widths = HEAD_WIDTHS[cfg.backbone]
    model = OfficialDPT(encoder_size=cfg.backbone.split("_")[-1], nclass=cfg.nclass, features=features,
                        out_channels=list(widths)).to(device).train()
    ema = copy.deepcopy(model).eval()
    for parameter in ema.parameters():
        parameter.requires_grad = False
    teacher = ema if teacher_kind == "ema" else model
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for name, p in model.named_parameters() if "backbone" not in name]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.lr_multi}],
                                  lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.01)
    criterion_l = nn.CrossEntropyLoss(ignore_index=255).to(device)
    criterion_u = nn.CrossEntropyLoss(reduction="none", **({"ignore_index": 255} if folder else {})).to(device)

    # the loader's output, made once: normalised images split into the model's inputs (A and B of a pair)
    normalize = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
    boxes = StrongPerturbation(PerturbationSettings.from_config(cfg), torch.Generator().manual_seed(0))

    def inputs(images):
        x = normalize(images.to(device).float() / 255)
        return list(x.split(3, dim=1)) if cfg.in_channels == 6 else [x]
    n, s = cfg.batch_size, cfg.crop_size
    x, y = inputs(batches[0][0]), batches[0][1].to(device)
    weak, ignore = inputs(batches[1][0]), batches[1][1].to(device)
    strong_sources = (inputs(batches[1][0].flip(-1)), inputs(batches[2][0]))
    box1, box2 = (boxes.cutmix_boxes(n, s, s).long().to(device) for _ in range(2))
    current = {}

    def prepare():   # fresh strong views each iteration: the official pastes write into them
        current["s1"] = [t.clone() for t in strong_sources[0]]
        current["s2"] = [t.clone() for t in strong_sources[1]]

    def paste_flipped(view, box):
        inside = box.unsqueeze(1).expand(view.shape) == 1
        view[inside] = view.flip(0)[inside]

    def unlabelled_loss(pred, label_w, conf_w, box):
        label, conf, valid = label_w.clone(), conf_w.clone(), ignore.clone()
        inside = box == 1
        label[inside] = label_w.flip(0)[inside]
        conf[inside] = conf_w.flip(0)[inside]
        valid[inside] = ignore.flip(0)[inside]
        loss = criterion_u(pred, label) * ((conf >= cfg.conf_thresh) & (valid != 255))
        return loss.sum() / (valid != 255).sum().item()

    counter = itertools.count()

    def iteration():
        i = next(counter)
        s1, s2 = current["s1"], current["s2"]
        with torch.no_grad():
            pred_w = teacher(*weak).detach()
            conf_w = pred_w.softmax(dim=1).max(dim=1)[0]
            label_w = pred_w.argmax(dim=1)
        for view in s1:
            paste_flipped(view, box1)
        for view in s2:
            paste_flipped(view, box2)
        if teacher is model:
            model.train()
        pred_x = model(*x)
        pred_s1, pred_s2 = model(*[torch.cat(pair) for pair in zip(s1, s2)], comp_drop=True).chunk(2)
        loss_x = criterion_l(pred_x, y)
        loss_s = (unlabelled_loss(pred_s1, label_w, conf_w, box1) + unlabelled_loss(pred_s2, label_w, conf_w, box2)) / 2
        loss = (loss_x + loss_s) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item(), loss_x.item(), loss_s.item()
        (((conf_w >= cfg.conf_thresh) & (ignore != 255)).sum().item() / (ignore != 255).sum()).item()
        lr = cfg.lr * (1 - i / POLY_TOTAL) ** 0.9
        optimizer.param_groups[0]["lr"] = lr
        optimizer.param_groups[1]["lr"] = lr * cfg.lr_multi
        r = min(1 - 1 / (i + 1), cfg.ema_ratio)
        for value, averaged in zip(model.parameters(), ema.parameters()):
            averaged.copy_(averaged * r + value.detach() * (1 - r))
        for value, averaged in zip(model.buffers(), ema.buffers()):
            averaged.copy_(averaged * r + value.detach() * (1 - r))
    return iteration, prepare, {"autocast": "fp32"}


def profile_ops(iteration, sync, top: int = 12) -> list[dict]:
    """One more iteration under ``torch.profiler``: the operators with the most self time (CPU,
    or CUDA on a GPU) and their share of the iteration, to see which work an option could cut."""
    import torch
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        iteration()
        sync()
    events = prof.key_averages()
    attribute = "self_device_time_total" if len(activities) > 1 else "self_cpu_time_total"
    total = sum(getattr(e, attribute) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attribute), reverse=True)[:top]
    return [{"op": e.key, "self_s": getattr(e, attribute) / 1e6, "share": getattr(e, attribute) / total,
             "calls": e.count} for e in ranked]


# ---- the parent: alternate the variants, summarise -------------------------------------------
def scenario_overrides(args) -> dict:
    """``--batch-size`` and ``--set KEY=VALUE`` as config values (the same for every variant)."""
    import yaml
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    return overrides


def measure(args, variants: list[str]) -> dict:
    runs = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            root = Path(args.ref_root) if variant == "main" else REPO
            env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads),
                       NO_ALBUMENTATIONS_UPDATE="1", **VARIANT_ENV.get(variant, {}))
            command = [sys.executable, str(Path(__file__).resolve()), "--child", "--scenario", args.scenario,
                       "--device", args.device, "--threads", str(args.threads), "--iters", str(args.iters),
                       "--warmup", str(args.warmup), "--settings", json.dumps(VARIANTS[variant]),
                       "--overrides", json.dumps(scenario_overrides(args))]
            if variant == "official_v2":
                command += ["--official", str(args.official)]
            if args.flops and not runs[variant]:
                command.append("--flops")
            if args.profile and not runs[variant]:
                command.append("--profile")
            load = os.getloadavg()[0]
            done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_before"] = load
            runs[variant].append(result)
            print(f"round {round_index + 1} {variant} ({result.get('autocast', 'fp32')}): " +
                  " ".join(f"{t:.2f}" for t in result["times"]) +
                  " s/iter (CPU " + " ".join(f"{t:.2f}" for t in result["cpu_times"]) +
                  " s; warm-up " + " ".join(f"{t:.1f}" for t in result.get("warmup_times", [])) +
                  f" s), peak RSS {result['peak_rss_gb']:.2f} GB, load {load:.2f}", file=sys.stderr, flush=True)
    return runs


def summarise(args, runs: dict) -> dict:
    import torch
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    first_run = next(iter(runs.values()))[0]
    out = {"scenario": args.scenario, "overrides": scenario_overrides(args), "device": device_name,
           "threads": args.threads, "torch": torch.__version__,
           "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
           **{key: first_run.get(key, "(unset)") for key in ("omp_wait_policy", "gomp_spincount")}, "variants": {}}
    base = None
    for variant, results in runs.items():
        times = [t for r in results for t in r["times"]]
        median = statistics.median(times)
        cpu_times = [t for r in results for t in r["cpu_times"]]
        row = {"settings": VARIANTS[variant], "ran_as": results[0].get("autocast", "fp32"),
               "warmup_s": [t for r in results for t in r.get("warmup_times", [])],
               "s_per_iter_median": median, "s_per_iter_min": min(times),
               "cpu_s_per_iter_median": statistics.median(cpu_times), "cpu_times": cpu_times,
               "s_per_iter_max": max(times), "iter_per_s": 1 / median,
               "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
               "load_average_before": [r["load_before"] for r in results], "times": times}
        if "peak_gpu_gib" in results[0]:
            row["peak_gpu_gib"] = max(r["peak_gpu_gib"] for r in results)
        profile = next((r["profile"] for r in results if "profile" in r), None)
        if profile:
            row["profile"] = profile
        flops = next((r["flops"] for r in results if "flops" in r), None)
        if flops:
            row["tflop_per_iter"] = flops / 1e12
            row["achieved_tflops"] = flops / 1e12 / median
            peak = next((p for name, p in DEVICE_PEAK_TFLOPS.items() if name in device_name), None)
            if peak:
                row["share_of_peak"] = row["achieved_tflops"] / peak[1 if VARIANTS[variant].get("amp") == "bf16" else 0]
        base = base or row
        row["speedup_vs_first"] = base["s_per_iter_median"] / median
        row["peak_rss_vs_first"] = row["peak_rss_gb"] / base["peak_rss_gb"]
        out["variants"][variant] = row
    return out


def print_table(summary: dict) -> None:
    overrides = " ".join(f"{k}={v}" for k, v in summary.get("overrides", {}).items())
    print(f"scenario {summary['scenario']}{' (' + overrides + ')' if overrides else ''} on {summary['device']}, "
          f"{summary['threads']} threads, "
          f"OMP_WAIT_POLICY {summary['omp_wait_policy']}, GOMP_SPINCOUNT {summary.get('gomp_spincount', '(unset)')}, "
          f"{summary['rounds']} rounds x {summary['iters']} iterations (+{summary['warmup']} warm-up)")
    print("| variant | ran as | s/iter median | min | max | it/s | CPU s/iter | peak RSS GB | speed-up | RSS ratio "
          "| load | first warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in summary["variants"].items():
        loads = row["load_average_before"]
        warmup = f"{max(row['warmup_s']):.1f}" if row.get("warmup_s") else "-"
        print(f"| {name} | {row['ran_as']} | {row['s_per_iter_median']:.2f} | {row['s_per_iter_min']:.2f} | "
              f"{row['s_per_iter_max']:.2f} | {row['iter_per_s']:.3f} | {row['cpu_s_per_iter_median']:.2f} | "
              f"{row['peak_rss_gb']:.2f} | "
              f"{row['speedup_vs_first']:.2f}x | {row['peak_rss_vs_first']:.2f} | "
              f"{min(loads):.1f}-{max(loads):.1f} | {warmup} |")
    for name, row in summary["variants"].items():
        if "profile" in row:
            print(f"\n{name}: operators with the most self time in one iteration")
            print("| operator | self s | share | calls |")
            print("|---|---|---|---|")
            for op in row["profile"]:
                print(f"| {op['op']} | {op['self_s']:.2f} | {100 * op['share']:.1f} % | {op['calls']} |")


# ---- strong views ------------------------------------------------------------------------------
def pil_strong_views(images, crop: int):
    """Per-sample strong views with PIL/torchvision transforms, as the official loaders make them."""
    import numpy as np
    import torch
    from PIL import ImageFilter
    from torchvision import transforms
    jitter = transforms.RandomApply([transforms.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8)
    gray = transforms.RandomGrayscale(p=0.2)
    to_tensor = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = []
    for image in images:
        for _ in range(2):
            view = gray(jitter(image))
            if random.random() < 0.5:
                view = view.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))
            box = np.zeros((crop, crop), np.uint8)
            if random.random() < 0.5:
                area = np.random.uniform(0.02, 0.4) * crop * crop
                while True:
                    ratio = np.random.uniform(0.3, 1 / 0.3)
                    w, h = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
                    x, y = np.random.randint(0, crop), np.random.randint(0, crop)
                    if x + w <= crop and y + h <= crop:
                        break
                box[y:y + h, x:x + w] = 1
            out.append(to_tensor(view))
    return torch.stack(out)


def bench_views(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
    device = torch.device(args.device)

    def time_it(fn, repeats):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (args.crop, args.crop, 3), dtype=np.uint8))
           for _ in range(args.batch)]
    perturb = StrongPerturbation(PerturbationSettings(), torch.Generator().manual_seed(0))
    normalizer = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    batch = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).to(device)

    def ours():
        weak = batch.float() / 255
        for _ in range(2):
            normalizer(perturb(weak))
            perturb.cutmix_boxes(args.batch, args.crop, args.crop, device=device)
    return {"crop": args.crop, "batch": args.batch,
            "pil_strong_views_ms_per_batch": 1000 * time_it(lambda: pil_strong_views(pil, args.crop), 3),
            "ours_strong_views_ms_per_batch": 1000 * time_it(ours, 5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["iteration", "views"], default="iteration")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="natural")
    parser.add_argument("--variants", nargs="+", default=["fp32", "recommended"], choices=sorted(VARIANTS))
    parser.add_argument("--ref-root", help="checkout whose unimatch package the variant 'main' uses")
    parser.add_argument("--official", type=Path,
                        help="checkout of LiheYoung/UniMatch-V2 whose loop the variant 'official_v2' runs")
    parser.add_argument("--batch-size", type=int, help="per-process batch instead of the scenario's official one")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="other config overrides of the scenario (YAML values), e.g. crop_size=28")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per process first")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, alternated")
    parser.add_argument("--flops", action="store_true", help="count FLOPs once per variant (TFLOP/s)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more iteration per variant: the operators with the most self time")
    parser.add_argument("--crop", type=int, default=321, help="views: crop size")
    parser.add_argument("--batch", type=int, default=8, help="views: images per batch")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(run_variant(args)))
        return
    if args.part == "views":
        summary = bench_views(args)
        print(json.dumps(summary, indent=2))
    else:
        if "main" in args.variants and not args.ref_root:
            parser.error("variant 'main' needs --ref-root")
        if "official_v2" in args.variants and (not args.official or args.scenario not in OFFICIAL_V2):
            parser.error(f"variant 'official_v2' needs --official and a V2 scenario ({', '.join(OFFICIAL_V2)})")
        summary = summarise(args, measure(args, args.variants))
        print_table(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
