"""The CPU features that decide how int8 kernels behave, for the compression report.

onnxruntime's x86 int8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW on
CPUs without VNNI (AVX2 or AVX-512 only); that instruction adds pairs of products in int16 and
saturates, so full-range int8 weights give different (wrong) results there than on a VNNI CPU.
The compressor quantizes with 7-bit weights (reduce_range), which cannot saturate, but the
gate's verdict still depends on the machine that measured it, so the report names it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str, machine: str) -> dict[str, Any]:
    """The report's `cpu` entry from the text of /proc/cpuinfo (first processor)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "Model name") and not model:
            model = value.strip()
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "i386")
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    return {
        "arch": machine,
        "model": model,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": vnni,
        # Where int8 x int8 products can saturate in onnxruntime's U8S8 kernels.
        "u8s8Saturates": x86 and not vnni,
    }


def cpu_features() -> dict[str, Any]:
    """This machine's CPU, as parse_cpuinfo describes it (empty flags off Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())
