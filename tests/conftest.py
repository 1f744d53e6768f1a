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


# --------------------------------------------------------------------------------------------
# A local Cloud Storage emulator (gcp-storage-emulator, pinned in setup.py's test extra)
# --------------------------------------------------------------------------------------------

GCS_BUCKET = "msd-test"
# Beam 2.77's GCS file system ignores --no_auth: it always asks google.auth for application
# default credentials, retrying ~20 s when there are none, then connects anonymously (which
# also honours STORAGE_EMULATOR_HOST). This file answers at once with a static token that never
# needs refreshing; the emulator accepts any token. Only the tests that use ``gcs`` see it.
_FAKE_CREDENTIALS = {"type": "authorized_user", "client_id": "emulator",
                     "client_secret": "emulator", "refresh_token": "emulator",
                     "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}


class GcsEmulator:
    """A running emulator: ``env`` holds the variables a process needs to use it through Beam's
    file systems (``STORAGE_EMULATOR_HOST`` and the credentials above)."""

    def __init__(self, host: str, bucket: str, credentials_path: str):
        self.host = host
        self.bucket = bucket
        self.env = {"STORAGE_EMULATOR_HOST": host,
                    "GOOGLE_APPLICATION_CREDENTIALS": credentials_path,
                    "GOOGLE_CLOUD_PROJECT": "emulator-test"}

    def url(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *(part.strip("/") for part in parts)])


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_emulator(log_path: pathlib.Path, timeout: float = 30.0):
    """Starts ``gcp-storage-emulator`` on a free loopback port; returns (process, host) once the
    default bucket answers, or fails naming the log."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = _free_loopback_port()
    host = f"http://127.0.0.1:{port}"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
         f"--port={port}", "--in-memory", f"--default-bucket={GCS_BUCKET}", "--quiet"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{host}/storage/v1/b/{GCS_BUCKET}", timeout=2) as answer:
                if answer.status == 200:
                    return process, host
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    process.kill()
    process.wait()
    return None, log_path.read_text(errors="replace")[-2000:]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """One in-memory GCS emulator per test session on a free loopback port, stopped at the end.
    Missing package: skips locally, fails under CI=true (it is in the test extra)."""
    import importlib.util
    import json
    import subprocess

    if importlib.util.find_spec("gcp_storage_emulator") is None:
        message = "gcp-storage-emulator is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("gcs_emulator")
    credentials = folder / "emulator_credentials.json"
    credentials.write_text(json.dumps(_FAKE_CREDENTIALS))
    log_path = folder / "emulator.log"
    for _ in range(3):  # the free port can be taken between probing and binding
        process, host = _start_emulator(log_path)
        if process is not None:
            break
    else:
        pytest.fail(f"the GCS emulator did not start; its log ends with:\n{host}")
    try:
        yield GcsEmulator(host, GCS_BUCKET, str(credentials))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a stuck emulator must not outlive the session
            process.kill()
            process.wait()


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    """The emulator, with its variables set in this process for the test's duration."""
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)
    return gcs_emulator
