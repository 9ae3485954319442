"""What this machine's CPU runs natively, for choosing what is fast on it (training's autocast, the
server's `--precision`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["NATIVE_BF16_FLAGS", "NATIVE_INT8_FLAGS", "cpu_bf16_flags", "cpu_int8_flags"]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# 8-bit dot products that accumulate in 32 bits: without them x86 multiplies u8 x s8 pairs into a
# saturating int16 (vpmaddubsw), so int8 weights must use 7 bits (ONNX Runtime's "reduce_range")
NATIVE_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_flags(cpuinfo: str | None) -> list[str] | None:
    """/proc/cpuinfo's flags, or None where there is no /proc (macOS, Windows)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    if not cpuinfo:
        return None
    return next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])


def cpu_int8_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's 8-bit dot-product instruction sets (VNNI, AMX) that /proc/cpuinfo lists; [] where it
    lists none or there is no /proc (ARM's dot products need no 7-bit weights either, but we cannot
    tell, and 7 bits are the safe side)."""
    flags = _cpu_flags(cpuinfo) or []
    return [f for f in NATIVE_INT8_FLAGS if f in flags]


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's native-BF16 instruction sets (avx512_bf16, amx_bf16) that /proc/cpuinfo lists, or
    torch's own probe where there is no /proc (macOS, Windows). Without them bf16 is emulated: on an
    AVX2-only machine an autocast step ran ~20x slower than fp32."""
    flags = _cpu_flags(cpuinfo)
    if flags is not None:
        return [f for f in NATIVE_BF16_FLAGS if f in flags]
    import torch  # only here: the server's config reads this without loading torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return ["avx512_bf16"] if probe is not None and probe() else []
