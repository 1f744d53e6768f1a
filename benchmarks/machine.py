"""What every benchmark records about the machine it ran on (results are only comparable on the
same machine, and this one is shared: the load average says how busy it was)."""
import datetime
import os
import platform
from typing import Optional


def loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def machine_info(**versions) -> dict:
    """CPU model and cores, memory, Python, platform and date, plus ``versions`` (library name →
    version, or any other fact a benchmark adds)."""
    model = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    info = {"cpu_model": model, "cpu_cores": os.cpu_count(), "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **versions}
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info
