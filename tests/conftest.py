"""Settings of the whole test session."""

from __future__ import annotations

import os

# Under pytest-xdist (one worker per core, pyproject's addopts) each worker and the commands it starts use
# one torch thread: two workers of two threads each on two cores run slower than one worker alone.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
