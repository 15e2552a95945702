"""Test-suite settings shared by every test folder."""

import torch

# Tests use small tensors: one intra-op thread avoids thread-synchronisation overhead, which on a loaded
# 2-core machine made small ops 50-100x slower. (The dev script also sets OMP_NUM_THREADS=1 for notebooks.)
torch.set_num_threads(1)
