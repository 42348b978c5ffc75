"""One line describing the machine a benchmark ran on (CPU model, cores, load, GPU), for every bench."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}; {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; {gpu}; "
            f"load average {load:.2f}; Python {platform.python_version()}, torch {torch.__version__}")
