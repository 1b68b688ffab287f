"""CPU feature detection for the report: VNNI decides whether U8S8 int8 kernels saturate."""

from __future__ import annotations

import pytest

from modelops.compress.cpu import cpu_features, parse_cpuinfo

pytestmark = pytest.mark.unit

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t: avx512_vnni\n"
XEON_VNNI = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


def test_avx2_without_vnni_is_flagged_as_saturating() -> None:
    assert parse_cpuinfo(EPYC_AVX2, "x86_64") == {
        "arch": "x86_64",
        "model": "AMD EPYC 7B12",
        "avx2": True,
        "avx512": False,
        "vnni": False,
        "u8s8Saturates": True,
    }


def test_vnni_and_non_x86_do_not_saturate() -> None:
    assert parse_cpuinfo(XEON_VNNI, "x86_64")["vnni"] is True
    assert parse_cpuinfo(XEON_VNNI, "x86_64")["u8s8Saturates"] is False
    assert parse_cpuinfo(ARM, "aarch64")["u8s8Saturates"] is False


def test_this_machine_is_described() -> None:
    features = cpu_features()
    assert set(features) == {"arch", "model", "avx2", "avx512", "vnni", "u8s8Saturates"}
    assert features["arch"]
