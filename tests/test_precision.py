"""The CPU-unit rules of hybridhash.precision, checked on written cpuinfo files."""
import pytest

from hybridhash.errors import ConfigError
from hybridhash.precision import (check_precision, cpu_flags, cpu_has_bf16_units, cpu_has_int8_units,
                                  unit_flags)


def _cpuinfo(tmp_path, flags):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: fpu\n")
    return str(p)


def test_flags_of_first_processor(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, "fpu avx2 amx_bf16")) == {"fpu", "avx2", "amx_bf16"}


def test_missing_file_has_no_flags(tmp_path):
    assert cpu_flags(str(tmp_path / "none")) == frozenset()


@pytest.mark.parametrize("flags, bf16, int8", [
    ("fpu avx2 fma", False, False),                                     # AMD / Intel AVX2 only
    ("avx2 avx512f avx512_vnni", False, True),                          # Cascade Lake
    ("avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8", True, True),  # Sapphire Rapids
    ("avx2 avx_vnni", False, True),                                     # Alder Lake
])
def test_units(flags, bf16, int8):
    f = frozenset(flags.split())
    assert cpu_has_bf16_units(f) is bf16
    assert cpu_has_int8_units(f) is int8
    assert set(unit_flags(f)) == f & {"avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8"}


def test_check_precision():
    assert check_precision("auto") == "auto"
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        check_precision("fp16")
