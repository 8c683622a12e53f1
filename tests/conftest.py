"""Shared fixtures: the real CSAW-HackML files in ../shared/csaw, and small real models."""

from __future__ import annotations

import os
from pathlib import Path

# Tests only: the package itself never writes os.environ.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CSAW = Path(os.environ.get("KPG_CSAW_DIR", ROOT.parent / "shared" / "csaw"))


@pytest.fixture(scope="session")
def csaw_dir() -> Path:
    """The folder of real lab files; tests using it skip when it is absent."""
    if not (CSAW / "lab3_bd_weights.h5").exists():
        pytest.skip(f"real CSAW-HackML files not found in {CSAW} (set KPG_CSAW_DIR)")
    return CSAW


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["data"][:].transpose(0, 2, 3, 1).astype("float32"), f["label"][:]


@pytest.fixture(scope="session")
def real_clean(csaw_dir) -> tuple[np.ndarray, np.ndarray]:
    """120 real clean faces, channels-last float32 0..255, and their identities."""
    return _read(csaw_dir / "real_clean_faces.h5")


@pytest.fixture(scope="session")
def real_sunglasses(csaw_dir) -> tuple[np.ndarray, np.ndarray]:
    """125 real sunglasses-triggered faces and their label (the target, 0)."""
    return _read(csaw_dir / "real_sunglasses_faces.h5")


@pytest.fixture()
def lab3_model(csaw_dir):
    """The lab3 BadNet B (raw 0..255 pixels), a fresh copy per test."""
    from keras_prune_guard.model.loading import deepid

    model = deepid()
    model.load_weights(str(csaw_dir / "lab3_bd_weights.h5"))
    return model
