#!/usr/bin/env bash
# The GPU check of issue 9, one short run on a machine with CUDA (python3 there has a CUDA torch):
# installs the project without touching torch, runs the CUDA tests (device, bf16 precision, one
# NCCL process) and times a few paper-size presets in fp32 and bf16 plus the ACF attention
# overhead, then the seconds a paper-size Glow step waits for its data (issue 22). Outputs go to $OUT
# (default ./gpu-check); about 6 minutes in all.
#
#     OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
#
# Issue 20 adds train.compile on / off for one preset of each family (compile_step.jsonl), about
# 5 minutes more.
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export OMP_NUM_THREADS=4
pip install --no-deps -e . > "$OUT/pip.log" 2>&1 || { echo "pip install failed, see $OUT/pip.log"; exit 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
    > "$OUT/torch.txt" 2>&1

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_precision.py \
    tests/test_distributed.py -k "cuda or nccl" > "$OUT/pytest-cuda.txt" 2>&1
echo "pytest exit status $?" >> "$OUT/pytest-cuda.txt"

timeout 300 python3 benchmarks/compile_step.py --device cuda --threads 4 --rounds 10 --presets glow-fmnist-tiny \
    flowpp-fmnist-tiny marflow-fmnist-tiny denseflow-fmnist-tiny resflow-fmnist-tiny \
    > "$OUT/compile_step.jsonl" 2> "$OUT/compile_step.err"
echo "compile benchmark exit status $?" >> "$OUT/compile_step.err"
cat "$OUT/compile_step.jsonl"

timeout 210 python3 benchmarks/gpu_presets.py --device cuda --precision fp32,bf16 --batch-size 32 --steps 5 \
    --warmup 2 --presets glow-cifar10,glow-cifar10-imap,marflow-cifar10-96,denseflow-74-10-cifar10 \
    > "$OUT/gpu_presets.jsonl" 2> "$OUT/gpu_presets.err"
echo "benchmark exit status $?" >> "$OUT/gpu_presets.err"

# glow-cifar10 at batch 64 for 30 steps on synthetic cached 32x32 data: data_wait_s against the step
timeout 150 python3 benchmarks/data_scale.py --items wait --device cuda --sizes 10000 --val 200 \
    --wait-batch 64 --wait-steps 30 > "$OUT/data_wait.jsonl" 2> "$OUT/data_wait.err"
echo "data wait exit status $?" >> "$OUT/data_wait.err"
tail -n 3 "$OUT/pytest-cuda.txt"
cat "$OUT/gpu_presets.jsonl"
cat "$OUT/data_wait.jsonl"
