"""What this machine's CPU runs natively, for choosing what is fast on it (training's autocast, the
server's `--precision`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["NATIVE_BF16_FLAGS", "cpu_bf16_flags"]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's native-BF16 instruction sets (avx512_bf16, amx_bf16) that /proc/cpuinfo lists, or
    torch's own probe where there is no /proc (macOS, Windows). Without them bf16 is emulated: on an
    AVX2-only machine an autocast step ran ~20x slower than fp32."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    if cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        return [f for f in NATIVE_BF16_FLAGS if f in flags]
    import torch  # only here: the server's config reads this without loading torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return ["avx512_bf16"] if probe is not None and probe() else []
