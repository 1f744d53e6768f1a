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


@pytest.fixture(scope="session")
def synthetic_sample(tmp_path_factory):
    """300 synthetic songs in 12 styles and 200 listeners (made once per test session)."""
    from msd import synthetic

    return synthetic.synthesize(str(tmp_path_factory.mktemp("synthetic")), num_songs=300,
                                num_users=200, seed=11, workers=1, progress=False)


@pytest.fixture(scope="session")
def synthetic_features(synthetic_sample, tmp_path_factory):
    """The feature pipeline's output over ``synthetic_sample`` (run once per test session)."""
    from pipelines import features

    output_dir = tmp_path_factory.mktemp("features")
    summary = features.run(["--input", synthetic_sample.data_dir, "--output_dir", str(output_dir),
                            "--overwrite"])
    return output_dir, summary
