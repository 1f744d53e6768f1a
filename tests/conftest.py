"""Shared fixtures: the real sample data (../shared/data) and small synthetic data sets."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DATA = pathlib.Path(os.environ.get("MSD_SAMPLE_DATA", REPO.parent / "shared" / "data"))


def sample_data_path(*parts: str) -> pathlib.Path:
    """A path inside the real sample data; fails under CI=true when it is missing, else skips."""
    path = SAMPLE_DATA.joinpath(*parts)
    if not path.exists():
        message = f"real sample data missing: {path} (set MSD_SAMPLE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_msd_dir() -> pathlib.Path:
    return sample_data_path("msd", "data")


@pytest.fixture(scope="session")
def invalid_msd_dir() -> pathlib.Path:
    return sample_data_path("invalid")
