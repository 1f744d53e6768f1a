"""What every command-line entry point shares: no native start-up noise, one-line errors.

TensorFlow 2.21 logs through absl's C++ logging before Python can configure it
(``TF_CPP_MIN_LOG_LEVEL`` no longer silences it: tensorflow/tensorflow#100442), so a plain
``python -m pipelines.recommend`` printed a dozen oneDNN/CUDA lines and ``failed call to cuInit:
… UNKNOWN ERROR (303)`` on every machine without a GPU. ``quiet_native_logs`` filters those
lines out of the process's stderr (file descriptor 2, where the C++ code writes); everything
else passes through unchanged. ``--debug`` keeps them, and shows tracebacks.

Use at the top of an entry module, before anything imports TensorFlow::

    from pipelines import cli

    if __name__ == "__main__":
        cli.quiet_native_logs()
    ...
    if __name__ == "__main__":
        cli.run_main("job", main)
"""
import atexit
import logging
import os
import re
import sys
import threading
from typing import Callable

DEBUG_FLAG = "--debug"
# absl/glog lines (I1130 07:22:31.123456  1234 file.cc:12] …, or I0000 00:00:17… before
# absl::InitializeLog), the banner absl prints before them, and TF's CPU feature notice.
_NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)")
# Native ERROR lines that are not errors for this product (no GPU on a CPU machine).
_HARMLESS_ERRORS = re.compile(rb"cuInit|cuda_platform|Unable to register cu(?:FFT|DNN|BLAS)")


# The same lines, found after other text: a progress bar redraws with "\r" and no newline, so a
# worker's native line can start in the middle of the bar's line.
_NATIVE_LOG_INSIDE = re.compile(_NATIVE_LOG_LINE.pattern[1:])


def without_noise(line: bytes) -> bytes:
    """``line`` with its native noise cut out (the whole line, or from where it starts after a
    progress bar's text); b"" when nothing else is left."""
    kept = []
    for part in line.split(b"\r"):
        found = _NATIVE_LOG_INSIDE.search(part)
        if found and is_noise(part[found.start():]):
            part = part[:found.start()]
        kept.append(part)
    text = b"\r".join(kept)
    return text if text.strip(b"\r\n") else b""


def debugging() -> bool:
    return DEBUG_FLAG in sys.argv


def is_noise(line: bytes) -> bool:
    """A native log line a user of the CLI does not need (INFO/WARNING, or a GPU-less error)."""
    if not _NATIVE_LOG_LINE.match(line):
        return False
    return not line.startswith(b"E") or bool(_HARMLESS_ERRORS.search(line))


def quiet_native_logs() -> None:
    """Routes file descriptor 2 through a filter that drops ``is_noise`` lines (not with
    ``--debug``). The filter is flushed and the real stderr restored at exit."""
    if debugging():
        return
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                kept = without_noise(line)
                if kept:
                    os.write(real_stderr, kept)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last write end: the pump drains and ends
        thread.join(timeout=5)

    atexit.register(restore)


# Beam log records that are not news on a machine without network or a Linux resource module:
# the DirectRunner's Prism download attempt (it falls back at once) and the memory probe.
_HARMLESS_LOG_MESSAGES = ("Unable to fetch remote prism binary", "Falling back to DirectRunner",
                          "Resource module is not available")


class _HarmlessBeamMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS_LOG_MESSAGES)


def configure_logging() -> None:
    """INFO logging (the jobs' progress lines) without the known-harmless Beam warnings."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.addFilter(_HarmlessBeamMessages())


def one_line(error: BaseException) -> str:
    """The cause of ``error`` in one line: the path and reason of an OS error, else the last
    line of the message (Beam wraps a worker's exception in a long text ending with it)."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 400 else text[:400] + " …"


def run_main(job: str, main: Callable[[], None]) -> None:
    """Runs an entry point's ``main``: an unexpected exception ends with one line naming the
    cause and exit status 1 (``--debug``: the traceback)."""
    debug = debugging()
    if debug:
        sys.argv.remove(DEBUG_FLAG)
    try:
        main()
    except Exception as error:  # noqa: BLE001 - the point: one line instead of a traceback
        if debug:
            raise
        print(f"{job}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
