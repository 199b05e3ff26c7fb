#!/usr/bin/env bash
# The prepared GPU check behind docs/PERFORMANCE.md: the vector-env tests (the CUDA equality test runs
# only where torch sees a GPU), the host's bookkeeping ceiling, snapshots at lower precision, then the
# throughput benchmark on the GPU. Run from the repository root with a CUDA build of torch installed;
# output is written to ${OUT:-gpu_out}/. A failing test or measurement is recorded and the throughput
# benchmark still runs.
#
# Extra arguments go to throughput.py; DEVICE=cpu runs the same steps without a GPU, as a dry run:
#   DEVICE=cpu bash benchmarks/gpu_check.sh --n-envs 1 2 --rounds 1
#
# Where gymnasium and stable-baselines3 are not installed, put their wheels (and farama-notifications')
# in .whl/ first; they are installed to /tmp/site:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl gymnasium stable-baselines3 farama-notifications
set -euo pipefail
out="${OUT:-gpu_out}"
device="${DEVICE:-cuda}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") 2>&1 | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_vector.py 2>&1 | tee "$out/tests.txt" || echo "tests failed"
(cd benchmarks && python3 bookkeeping.py --n-envs 64 --device "$device") 2>&1 | tee "$out/bookkeeping.txt" || echo "bookkeeping.py failed"
(cd benchmarks && python3 snapshot_precision.py --device "$device") 2>&1 | tee "$out/precision.txt" || echo "snapshot_precision.py failed"
(cd benchmarks && python3 throughput.py --device "$device" --rounds 3 --no-subproc "$@") 2>&1 | tee "$out/throughput.txt"
