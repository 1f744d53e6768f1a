"""What every command-line entry point shares: no native start-up noise, one-line errors, and a
temporary folder of the run's own that is removed at exit.

TensorFlow 2.21 logs through absl's C++ logging before Python can configure it
(``TF_CPP_MIN_LOG_LEVEL`` no longer silences it: tensorflow/tensorflow#100442), so a plain
``python -m pipelines.recommend`` printed a dozen oneDNN/CUDA lines and ``failed call to cuInit:
… UNKNOWN ERROR (303)`` on every machine without a GPU. ``quiet_native_logs`` filters those
lines out of the process's stderr (file descriptor 2, where the C++ code writes); everything
else passes through unchanged. ``--debug`` keeps them, and shows tracebacks.

Libraries leave files in the temporary folder of the machine (``/tmp``) after every run: Beam's
``multi_process_shared`` (the scoring model shared across processes) its ``<hex>.address`` and
``.lock`` files, the DirectRunner ``beam-temp*``, ``beam-requirements-cache`` and ``tmp*``
folders, TensorFlow's autograph ``__autograph_generated_file*.py``, the feature job's
``tft_local_*``/``tft_dry_run_*``. ``use_run_temp_dir`` (called by ``quiet_native_logs``, so
before those libraries are imported: ``multi_process_shared`` reads ``tempfile.gettempdir()``
when it is imported) gives the run its own folder, ``msd-<job>-<pid>-<random>`` in the user's
temporary folder, and points ``tempfile.tempdir`` and ``TMPDIR`` (for subprocesses) at it. It is
removed at exit, whether the run succeeded or failed, and on SIGTERM; a run killed outright
(SIGKILL) cannot, and the next run removes it (no process holds its lock any more). ``--debug``
keeps it and prints where it is.

Use at the top of an entry module, before anything imports TensorFlow::

    from pipelines import cli

    if __name__ == "__main__":
        cli.quiet_native_logs()
    ...
    if __name__ == "__main__":
        cli.run_main("job", main)
"""
import atexit
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from typing import Callable, Optional

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
    """The start of a command-line run, before anything imports TensorFlow or Beam: gives the
    run its own temporary folder (``use_run_temp_dir``), and routes file descriptor 2 through a
    filter that drops ``is_noise`` lines (not with ``--debug``). The filter is flushed and the
    real stderr restored at exit."""
    use_run_temp_dir()
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


class _WithoutTracebacks(logging.Filter):
    """Log records keep their message but lose their traceback (Beam logs a failing worker's
    whole stack before the job fails; the CLI then ends with the cause in one line):
    ``--debug`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def configure_logging() -> None:
    """INFO logging (the jobs' progress lines) without the known-harmless Beam warnings, and
    without library tracebacks unless ``--debug``."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.addFilter(_HarmlessBeamMessages())
        if not debugging():
            handler.addFilter(_WithoutTracebacks())


def one_line(error: BaseException) -> str:
    """The cause of ``error`` in one line: the path and reason of an OS error, else the last
    line of the message (Beam wraps a worker's exception in a long text ending with it)."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 400 else text[:400] + " …"


# --------------------------------------------------------------------------------------------
# The run's own temporary folder
# --------------------------------------------------------------------------------------------

RUN_TEMP_PREFIX = "msd-"
# Held (flock) by the run for its life: the kernel lets it go when the process ends in any way
# (SIGKILL, a crash), so a later run can tell a dead run's folder from a live one's, also one of
# another PID namespace sharing /tmp. A folder without it (--debug kept it) is never swept.
RUN_TEMP_LOCK = ".msd-run.lock"
_RUN_TEMP_NAME = re.compile(re.escape(RUN_TEMP_PREFIX) + r"[\w.-]+-\d+-\w+$")
_run_temp: Optional[str] = None  # this process's folder, once made
_run_temp_lock: Optional[int] = None  # the open, locked RUN_TEMP_LOCK
_run_temp_owner: Optional[int] = None  # the process that made it (not a forked child)
_keep_run_temp = False  # --debug
_previous_sigterm = None


def _job_name() -> str:
    """``recommend`` for ``python -m pipelines.recommend``, else the script's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec else os.path.splitext(os.path.basename(sys.argv[0] or "run"))[0]
    return re.sub(r"[^\w.-]", "_", name.rsplit(".", 1)[-1]) or "run"


def use_run_temp_dir(job: Optional[str] = None) -> str:
    """Makes ``msd-<job>-<pid>-<random>`` in the user's temporary folder (``TMPDIR``, else
    /tmp) the temporary folder of this process and of the processes it starts, and removes it
    at exit (atexit, and on SIGTERM); ``--debug`` keeps it. A run killed outright (SIGKILL)
    cannot remove its folder: the next run does (``remove_dead_runs_temp_dirs``). Returns its
    path; a second call returns the same folder."""
    global _run_temp, _run_temp_owner, _run_temp_lock, _keep_run_temp, _previous_sigterm
    if _run_temp is not None:
        return _run_temp
    parent = tempfile.gettempdir()
    remove_dead_runs_temp_dirs(parent)
    _run_temp = tempfile.mkdtemp(prefix=f"{RUN_TEMP_PREFIX}{job or _job_name()}-{os.getpid()}-",
                                 dir=parent)
    _run_temp_owner = os.getpid()
    # Locked under another name, then renamed: a sweeper never sees it unlocked.
    making = os.path.join(_run_temp, RUN_TEMP_LOCK + ".new")
    _run_temp_lock = os.open(making, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(_run_temp_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(making, os.path.join(_run_temp, RUN_TEMP_LOCK))
    _keep_run_temp = debugging()
    tempfile.tempdir = _run_temp
    os.environ["TMPDIR"] = _run_temp
    atexit.register(remove_run_temp_dir)
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            _previous_sigterm = previous
            signal.signal(signal.SIGTERM, _removed_then_terminated)
    return _run_temp


def remove_run_temp_dir() -> None:
    """Removes this process's temporary folder (``--debug``: says where it is, and keeps it).
    Only the process that made it removes it (not a forked worker)."""
    global _run_temp, _run_temp_lock
    path = _run_temp
    if path is None or os.getpid() != _run_temp_owner:
        return
    _run_temp = None  # once (atexit, or SIGTERM)
    if _keep_run_temp:
        with contextlib.suppress(OSError):  # kept: no later run sweeps it
            os.unlink(os.path.join(path, RUN_TEMP_LOCK))
        print(f"--debug: temporary files kept in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)
    if _run_temp_lock is not None:
        os.close(_run_temp_lock)
        _run_temp_lock = None


def remove_dead_runs_temp_dirs(parent: str) -> list[str]:
    """Removes the folders of runs that ended without removing theirs (killed with SIGKILL, out
    of memory): ``msd-<job>-<pid>-<random>`` folders of this user in ``parent`` whose lock no
    process holds any more. Returns them."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(parent, name)
        if not _RUN_TEMP_NAME.match(name) or os.path.islink(folder):
            continue
        try:
            if os.stat(folder).st_uid != os.getuid():
                continue
            lock = os.open(os.path.join(folder, RUN_TEMP_LOCK), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:  # no lock: being made, kept by --debug, or not one of ours
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            continue  # a live run holds it
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)
        removed.append(folder)
    return removed


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM, as Ctrl-C raises KeyboardInterrupt: what the run
    was doing unwinds (a publication puts the previous output back, or finishes one that was
    already committed), the temporary folder is removed at exit, and the exit status is 143
    (128 + SIGTERM). A subclass of SystemExit: ``except Exception`` does not swallow it."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


_terminating = False  # a first SIGTERM was raised as Terminated
_terminated_said = False  # "<job>: terminated" printed


def _say_terminated(job: Optional[str] = None) -> None:
    """The one line of a terminated run: printed by ``run_main``, or at exit when the signal
    came before it (while the entry module imports its libraries)."""
    global _terminated_said
    if not _terminated_said:
        _terminated_said = True
        print(f"{job or _job_name()}: terminated", file=sys.stderr)


def _removed_then_terminated(signum, frame) -> None:
    """SIGTERM: the first raises ``Terminated`` in the main thread (the run unwinds, its
    publication is put back or finished). A second one, or one in a forked child, takes the
    default action at once, after removing the temporary folder (the run's staging is then
    cleaned by the next run, as after a kill)."""
    global _terminating
    if not _terminating and os.getpid() == _run_temp_owner:
        _terminating = True
        atexit.register(_say_terminated)
        raise Terminated()
    remove_run_temp_dir()
    signal.signal(signum, _previous_sigterm or signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def run_main(job: str, main: Callable[[], Optional[int]]) -> None:
    """Runs an entry point's ``main``: an unexpected exception ends with one line naming the
    cause and exit status 1 (``--debug``: the traceback); Ctrl-C ends with one line and status
    130; a non-zero integer returned is the exit status. The run's temporary folder (made here
    if the entry did not call ``quiet_native_logs``) is removed at exit in every case (after
    the libraries' own exit handlers, which still use it: the folder's handler is registered
    before they are imported). SIGTERM ends like Ctrl-C (``Terminated``): one line, status 143."""
    use_run_temp_dir(job)
    debug = debugging()
    if debug:
        sys.argv.remove(DEBUG_FLAG)
    try:
        status = main()
    except Exception as error:  # noqa: BLE001 - the point: one line instead of a traceback
        if debug:
            raise
        print(f"{job}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{job}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Terminated:
        _say_terminated(job)
        raise SystemExit(128 + signal.SIGTERM) from None
    if status:
        raise SystemExit(status)
