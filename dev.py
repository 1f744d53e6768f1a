#!/usr/bin/env python3
"""One-command set-up for a fresh machine: creates ``.venv``, installs the pinned
project into it, then runs the demo or the test suite inside it.

    python3 dev.py demo   # synthesize a sample, run the pipelines locally, show the output
    python3 dev.py test   # the whole test suite (what CI runs)

Only the standard library is used here, so it runs on a bare Python 3.11.
"""
import hashlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
VENV = pathlib.Path(os.environ.get("MSD_VENV", ROOT / ".venv"))
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"
INSTALL_INPUTS = ("setup.py", "constraints.txt")


def _install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Creates the virtualenv and installs the project, unless it is already current."""
    fingerprint = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"dev.py: Python 3.11 is required, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"dev.py: creating virtualenv {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("dev.py: installing pinned dependencies (first run: a few minutes)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[test,local]"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "check"], check=True)
    STAMP.write_text(fingerprint)


def run(args: list[str]) -> int:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return subprocess.run([str(PYTHON)] + args, cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    if argv[0] == "test":
        return run(["-m", "pytest", "tests"] + argv[1:])
    return run(["-m", "pipelines.demo"] + argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
