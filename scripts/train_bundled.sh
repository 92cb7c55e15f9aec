#!/usr/bin/env bash
# Reproduce the bundled models (hwsim/models/smallcnn_{baseline,robust}.hwsim, mobilenetv2.hwsim, mobilenetv3.hwsim) on the default data
# (MNIST 5k subset: 4000 train / 1000 test). CPU, 2 threads, seeded: reruns give the same weights
# on the same machine/torch build. Checkpoints go to ${CKPT_DIR:-build/bundled}.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT_DIR=${CKPT_DIR:-build/bundled}
EPOCHS=${EPOCHS:-30}
mkdir -p "$CKPT_DIR"
export NUMBA_NUM_THREADS=2 OMP_NUM_THREADS=2
COMMON=(--arch smallcnn --data default --epochs "$EPOCHS" --lr 0.05 --batch-size 64 --seed 0 --threads 2 --quiet)

# baseline: plain SGD + cosine
/usr/bin/time -f "baseline wall %e s" python -m hwsim.cli train "${COMMON[@]}" \
    --out "$CKPT_DIR/smallcnn_baseline.pt" --export hwsim/models/smallcnn_baseline.hwsim

# robust: KURE (λ=1, BN-folded weights) + SymReg (λ1=λ2=0.1) + SatNL (tanh weights) + ASAM (ρ=1.0)
/usr/bin/time -f "robust wall %e s" python -m hwsim.cli train "${COMMON[@]}" \
    --kure 1.0 --symreg 0.1 --satnl --sam asam --rho 1.0 \
    --out "$CKPT_DIR/smallcnn_robust.pt" --export hwsim/models/smallcnn_robust.hwsim

# MobileNetV2 (depthwise convs, ReLU6, residual adds), plain training, 8 epochs: the network where
# per-tensor and 4-bit quantization, and fake-quant's tie rule, matter most
/usr/bin/time -f "mobilenetv2 wall %e s" python -m hwsim.cli train --arch mobilenetv2 --data default --epochs 8 \
    --lr 0.05 --batch-size 64 --seed 0 --threads 2 --quiet \
    --out "$CKPT_DIR/mobilenetv2.pt" --export hwsim/models/mobilenetv2.hwsim

# MobileNetV3-small style (hard-swish / hard-sigmoid tables, squeeze-excitation mul, depthwise, residual),
# plain training, 8 epochs: the network of issue 16's ops (hwsim run -m mobilenetv3 -p int4-pow2)
/usr/bin/time -f "mobilenetv3 wall %e s" python -m hwsim.cli train --arch mobilenetv3 --data default --epochs 8 \
    --lr 0.05 --batch-size 64 --seed 0 --threads 2 --quiet \
    --out "$CKPT_DIR/mobilenetv3.pt" --export hwsim/models/mobilenetv3.hwsim
