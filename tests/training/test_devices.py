"""Device and precision choice, and a training step of each command on the `meta` device: a tensor
left on the CPU by a hard-coded call would surface there (no GPU is needed to check the plumbing)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.factories import make_tiny_core
from training.devices import Precision, Processes, choose_precision, cpu_bf16_flags, resolve_device

CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_bf16_only_where_native():
    assert cpu_bf16_flags(CPUINFO_BF16) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(CPUINFO_AVX2) == []
    cpu = torch.device("cpu")
    native = choose_precision(cpu, "auto", CPUINFO_BF16)
    assert native.dtype == torch.bfloat16 and "avx512_bf16" in native.reason and not native.scaled
    plain = choose_precision(cpu, "auto", CPUINFO_AVX2)
    assert plain.dtype is None and "no native BF16" in plain.reason
    assert choose_precision(cpu, "true", CPUINFO_AVX2).dtype == torch.bfloat16  # the user overrides
    assert choose_precision(cpu, "false", CPUINFO_BF16).dtype is None
    with pytest.raises(ValueError, match="bf16"):
        choose_precision(cpu, "maybe")


def test_cuda_precision_and_device_choice(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision(cuda).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    old_gpu = choose_precision(cuda)
    assert old_gpu.dtype == torch.float16 and old_gpu.scaled and "scaler" in old_gpu.reason
    assert choose_precision(cuda, "false").dtype is None

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # torchrun: the rank's own GPU
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")


class _Devices(TorchDispatchMode):
    """Records the device of every tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.append((str(func), t.device.type, t.numel()))
        return out


def _assert_on_meta(devices: _Devices) -> None:
    # only the pairs' random numbers (<= 50 per image; batch 2 here) are drawn on the CPU, so a seed gives
    # the same pairs on every device; images, maps, activations and parameters are far larger
    stray = [(op, n) for op, dev, n in devices.seen if dev != "meta" and n > 128]
    assert not stray, f"tensors left on the CPU: {stray[:5]}"
    assert sum(dev == "meta" for _, dev, _ in devices.seen) > 100


def test_an_adaptation_step_runs_wholly_on_the_device():
    from training.adapt_step import AdaptationStep, LossWeights
    from training.detectors import build_detector
    from training.generator import ConditionalGenerator, GeneratorConfig
    from training.optimisers import ClipGroup, Optimisers
    from training.pairs import PairConfig
    from training.perceptual import MobileNetV2Features, PerceptualLoss

    meta = torch.device("meta")
    detector = build_detector("proposed", make_tiny_core().to(meta), 4, "all", 0, 32, "core").train()
    generator = ConditionalGenerator(GeneratorConfig(4, 4, 1)).to(meta).train()
    params = [p for p in detector.parameters() if p.requires_grad]
    head = {id(p) for p in detector.head.parameters()}
    optimisers = Optimisers(
        {"detector": torch.optim.Adam([{"params": [p for p in params if id(p) not in head]},
                                       {"params": [p for p in params if id(p) in head]}]),
         "generator": torch.optim.Adam(generator.parameters())},
        Precision(None, "fp32"), Processes(), meta, clip=[ClipGroup(params, 1.0)])

    class Images:
        def batches(self, epoch):
            yield torch.empty(2, 3, 32, 32, device=meta)

    task = AdaptationStep("test", detector, generator, PerceptualLoss(MobileNetV2Features()).to(meta), optimisers,
                          {"detector": (1e-3, 1e-3), "generator": (1e-3,)}, lambda step: 1.0, Images(),
                          PairConfig(tps_sd=0.05), LossWeights(10.0, 0.7, equivariance=1.0, separation=1.0, concentration=1.0),
                          Precision(None, "fp32"), meta, 0, None, export=None)
    with _Devices() as devices:
        for batch in task.batches(0):
            record = task.train_step(batch, 0)
    _assert_on_meta(devices)
    assert all(v.device == meta for v in record.values() if isinstance(v, torch.Tensor))
    assert all(p.device == meta for p in [*detector.parameters(), *generator.parameters()])


def test_a_core_step_runs_wholly_on_the_device(tmp_path):
    from tests.training.synthetic_pose import write_lspet
    from training.core_data import PoseCrops
    from training.datasets import open_dataset
    from training.optimisers import Optimisers
    from training.train_core import PRESETS, CoreStep, CoreTrainConfig

    meta = torch.device("meta")
    data = open_dataset(f"lspet:{write_lspet(tmp_path / 'lspet', n=4)}")
    cfg = CoreTrainConfig(**{**PRESETS["smoke"], "arch": "tiny"})
    model = make_tiny_core(14).to(meta, memory_format=torch.channels_last).train()
    optimisers = Optimisers({"model": torch.optim.Adam(model.parameters())}, Precision(None, "fp32"),
                            Processes(), meta)
    task = CoreStep(cfg, model, optimisers, PoseCrops(data, 32), PoseCrops(data, 32), meta,
                    Precision(None, "fp32"), Processes(), tmp_path, export=None)
    batch = next(iter(task.batches(0)))  # a CPU batch from the loader, as on a GPU
    with _Devices() as devices:
        record = task.train_step(batch, 0)
    _assert_on_meta(devices)
    assert record["loss"].device == meta


def test_compile_falls_back_without_a_cpp_compiler(monkeypatch):
    import shutil

    from training.devices import compiled

    module = torch.nn.Linear(2, 2)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    same, why = compiled(module, torch.device("cpu"))
    assert same is module and "no" in why and "C++" in why
