"""The one helper that gates GPU-only tests.

Tests that need a CUDA device use ``@requires_cuda``; on a CPU-only machine (CI) they are skipped
with a reason instead of failing, so the suite stays green where no accelerator exists.
"""

import pytest
import torch

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (skipped on CPU-only machines)"
)
