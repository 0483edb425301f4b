#!/usr/bin/env bash
# The GPU machine's side of bench/gpu_fp16_check.py (see that file, and
# shared/design/gpu-verification.md): install the carried pure-Python wheels (.whl/:
# onnx-graphsurgeon for trtbuild's clean passes, polygraphy), say what the machine has, run the
# check under `timeout 200`. Arguments go to the script (e.g. --quick). The log and
# gpu_fp16_check.json go to $OUT when it is set.
# Run from the repository root: bash bench/gpu_run.sh
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" || exit 3
fi
nvidia-smi --query-gpu=name,driver_version --format=csv
python3 - <<'PY'
import platform, numpy, onnx, onnxruntime, torch
print(f"python {platform.python_version()}  torch {torch.__version__} (cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()})  onnx {onnx.__version__}  "
      f"onnxruntime {onnxruntime.__version__}  numpy {numpy.__version__}")
for name in ("onnx_graphsurgeon", "polygraphy", "torchvision"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')} ({m.__file__})")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: MISSING ({type(e).__name__}: {e})")
PY
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && timeout 200 python3 bench/gpu_fp16_check.py "$@" 2>&1 | tee "$OUT/gpu_run.log"
else
    timeout 200 python3 bench/gpu_fp16_check.py "$@"
fi
