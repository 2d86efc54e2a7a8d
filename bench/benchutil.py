"""
Facts about the machine a benchmark ran on, shared by the benchmarks here
(run as C{python bench/NAME.py}, so this directory is on C{sys.path}).
"""

import os
import platform
import sys


def machine() -> dict:
    """
    CPU, Python and Twisted facts, for the printed report and the JSON.
    """
    try:
        from importlib.metadata import version

        tw = version("twisted")
    except Exception:
        tw = "?"
    cpu = "?"
    virtualized = False
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        for line in info.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        virtualized = " hypervisor" in info
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "virtualized": virtualized,
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "executable": sys.executable,
        "twisted": tw,
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }
