"""Where a training run computes: the device, the precision, and the processes of a torchrun job.

Each choice comes with the reason for it, which the run prints once, so a log says why a step was
fast or slow on that machine (docs/training_speed.md has the measurements behind the rules).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

import torch

from landmarks.hardware import cpu_bf16_flags  # shared with the server's --precision

__all__ = ["BF16_CHOICES", "Precision", "Processes", "choose_precision", "compiled", "cpu_bf16_flags",
           "resolve_device", "start_processes"]

BF16_CHOICES = ("auto", "true", "false")


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a device of this machine; under torchrun a bare `cuda` (or
    `auto`) is the process's own GPU, LOCAL_RANK."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device on this machine (torch.cuda.is_available() is "
                             "False); use --device cpu or auto")
        index = int(spec.partition(":")[2] or local_rank)
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32) and whether gradients need scaling (fp16), with why."""

    dtype: torch.dtype | None
    reason: str

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def choose_precision(device: torch.device, bf16: str = "auto", cpuinfo: str | None = None) -> Precision:
    """Mixed precision where the machine runs it natively; `bf16` true/false overrides the guess.

    CUDA: bf16 where the GPU supports it, else fp16 with a gradient scaler. CPU: bf16 only with native
    BF16 instructions (AVX-512 BF16 or AMX): on AVX2-only CPUs bf16 was 20x slower than fp32.
    """
    bf16 = str(bf16).lower()
    if bf16 not in BF16_CHOICES:
        raise ValueError(f"--bf16 must be one of {BF16_CHOICES}, got {bf16!r}")
    if bf16 == "false":
        return Precision(None, "fp32: --bf16 false")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, f"bf16 autocast: {torch.cuda.get_device_name(device)} supports it")
        if bf16 == "true":
            raise ValueError("--bf16 true: this GPU has no bfloat16; leave --bf16 auto for fp16 with a scaler")
        return Precision(torch.float16, "fp16 autocast with a gradient scaler: this GPU has no bfloat16")
    if device.type != "cpu":
        return Precision(None, f"fp32 on {device.type}")
    flags = cpu_bf16_flags(cpuinfo)
    if bf16 == "true":
        return Precision(torch.bfloat16, f"bf16 autocast: --bf16 true (native BF16: {', '.join(flags) or 'none'})")
    if flags:
        return Precision(torch.bfloat16, f"bf16 autocast: the CPU has native BF16 ({', '.join(flags)})")
    return Precision(None, "fp32: the CPU has no native BF16 (no avx512_bf16/amx_bf16), where bf16 is slower")


def compiled(module: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, str]:
    """`torch.compile(module)` where it can work, else the module itself; with why. On the CPU it needs
    a C++ compiler; a graph that fails to compile later runs eagerly instead of stopping the run."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return module, "eager: torch.compile needs a C++ compiler on the CPU and there is none"
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(module), "torch.compile (falls back to eager where a graph fails)"


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a permutation every rank drew alike (equal lengths, tail dropped)."""
        usable = len(indices) // self.world * self.world
        return indices[self.rank:usable:self.world]

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's decision (e.g. time is up), taken by every rank so none waits for the others."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.broadcast(value, 0)
        return bool(value.item())

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Data parallelism: every rank's gradients replaced by their mean, in one all-reduce."""
        if self.world == 1:
            return
        for p in parameters:  # a parameter without a gradient here may have one on another rank
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in parameters]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def same_start(self, *modules: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the same seed builds the same networks, but a
        warm start or a resume must not leave the ranks apart either)."""
        if self.world == 1:
            return
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, 0)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_processes(device_spec: str = "auto") -> tuple[Processes, torch.device]:
    """Join the torchrun job if there is one (NCCL on GPUs, gloo on CPUs) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if world == 1:
        return Processes(), device
    if not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(torch.distributed.get_rank(), world, local_rank), device
