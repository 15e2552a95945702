"""Test-suite settings shared by every test folder."""

import pytest
import torch

# Tests use small tensors: one intra-op thread avoids thread-synchronisation overhead, which on a loaded
# 2-core machine made small ops 50-100x slower. (The dev script also sets OMP_NUM_THREADS=1 for notebooks.)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fermi_hubbard_demo():
    """The flagship Fermi-Hubbard demo, built once per session (or loaded from the cache).

    Its shipped weights sit at a true minimum (positive definite Hessian, stationary by the toolbox's
    test) and it ships a tuned damping, so building it retrains nothing and warns nothing: any hessview
    warning fails the test that first asks for it (the suite's ``filterwarnings``).
    """
    from hessview.app.demos import load_demo

    return load_demo("fermi-hubbard", progress=False)
