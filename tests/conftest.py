import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]

# Tolerances per dtype for comparing a stage with its reference twin (house style rule 13).
TOLERANCES = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.float64: {"atol": 1e-9, "rtol": 1e-9}}


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    """A floating dtype for stage tests (parametrised with ``device``: every dtype on every device)."""
    return request.param


@pytest.fixture
def tol(dtype):
    """``assert_close`` tolerances for ``dtype``."""
    return TOLERANCES[dtype]
