#!/usr/bin/env bash
# One short GPU session: the CUDA tests of the core, the step benchmark of V1 and of UniMatch V2.
# Needs only torch/torchvision/pyyaml/tqdm/tensorboard (no task packages), so it runs on a bare
# GPU image with the repository on PYTHONPATH:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# UNIMATCH_OFFICIAL_V2=/path/to/UniMatch-V2 (a checkout of LiheYoung/UniMatch-V2) adds the official
# V2 oracle test and the official V2 loop body (variant official_v2) beside ours.
# GPU_CHECK_PARTS picks what runs, default "tests views v1 v2" (e.g. GPU_CHECK_PARTS=v2 for V2 alone).
# Not run by CI (no GPU there); check its syntax with bash -n.
set -u
out="${1:-${OUT:-.}}"
parts=" ${GPU_CHECK_PARTS:-tests views v1 v2} "
official="${UNIMATCH_OFFICIAL_V2:-}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
if [[ $parts == *" tests "* ]]; then
  # the V2 model and method tests run on the CPU here too; the oracle needs UNIMATCH_OFFICIAL_V2 (else it skips)
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_method.py tests/test_perturb.py \
      tests/test_engine.py tests/test_dpt.py tests/test_unimatch_v2.py tests/test_bench_step.py \
      tests/test_official_v2_oracle.py 2>&1 | tail -15
fi
if [[ $parts == *" views "* ]]; then
  python3 benchmarks/bench_step.py --part views --device cuda --crop 321 --batch 8 --json "$out/bench_views_321.json"
fi
if [[ $parts == *" v1 "* ]]; then
  for scenario in natural change_detection acdc; do
    python3 benchmarks/bench_step.py --device cuda --scenario "$scenario" --variants fp32 channels_last bf16 recommended \
        --iters 10 --warmup 3 --rounds 2 --flops --json "$out/bench_gpu_$scenario.json"
  done
fi
if [[ $parts == *" v2 "* ]]; then
  # official shapes and batch: natural_v2 DPT ViT-S crop 518 batch 4, change_detection_v2 siamese DPT ViT-B crop 252 batch 8
  v2_variants=(fp32 channels_last bf16 recommended)
  v2_official=()
  if [[ -n $official ]]; then
    v2_variants=(official_v2 "${v2_variants[@]}")
    v2_official=(--official "$official")
  fi
  for scenario in natural_v2 change_detection_v2; do
    python3 benchmarks/bench_step.py --device cuda --scenario "$scenario" --variants "${v2_variants[@]}" \
        ${v2_official[@]+"${v2_official[@]}"} --iters 10 --warmup 3 --rounds 2 --flops --json "$out/bench_gpu_$scenario.json"
  done
fi
