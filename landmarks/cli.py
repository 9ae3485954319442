"""`landmarks`: one entry point, one subcommand per job.

Subcommands import their side (training or serving) lazily, so a server install without the
training extra still runs `landmarks serve` and `landmarks info`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

_EPILOG = """\
examples:
  landmarks info adapters/core.safetensors           what a core or adapter file holds
  landmarks train-core --preset cpu --out runs/core  train the frozen core on LSP-extended
  landmarks evaluate-core adapters/core.safetensors --dataset lspet:../shared/data/lspet --split 9000:
"""

# name -> (module, help); each module has add_arguments(parser) and main(args) -> int
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("landmarks.cli", "print a core's, adapter's or network's metadata, parameter counts and size"),
    "train-core": ("training.train_core", "train the core landmark detector supervised on human pose"),
    "evaluate-core": ("training.evaluate_core", "PCK of a core on annotated pose data, with an overlay picture"),
    "adapt": ("training.adapt", "learn a new category's landmarks from unlabelled images (adapter or baseline)"),
    "evaluate": ("training.evaluate", "forward / backward / consistency errors of an adapter or baseline, with pictures"),
    "serve": ("serving.commands.serve", "run the gRPC landmark server (inference + admin, health, reflection)"),
    "detect": ("serving.commands.detect", "landmarks of images from a running server, as JSON (--draw to plot)"),
    "register": ("serving.commands.register", "register an adapter version with a running server"),
    "unregister": ("serving.commands.unregister", "remove an adapter version or a whole category from a server"),
    "activate": ("serving.commands.activate", "make a registered adapter version active (roll back)"),
    "categories": ("serving.commands.categories", "list a server's categories, versions and states"),
    "bench": ("serving.commands.bench", "latency/throughput of a running server vs the bare and official forward"),
}


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, nargs="?", help="a .safetensors core, adapter or network file")
    parser.add_argument("--arch", choices=["paper", "cpu", "tiny"],
                        help="instead of a file: parameter counts of a built-in architecture")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def _architecture_counts(config) -> dict[str, int]:
    import torch

    from landmarks.hourglass import LandmarkHourglass
    from landmarks.projection import expected_adapter_shapes

    with torch.device("meta"):
        core = LandmarkHourglass(config)
    convs3 = [m for m in core.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    convs = [m for m in core.modules() if isinstance(m, torch.nn.Conv2d) and m is not core.head]
    adapter = expected_adapter_shapes(config, 10, "all")
    return {
        "core_parameters": sum(p.numel() for p in core.parameters()),
        "conv3x3_layers": len(convs3),
        "sum_cout2_conv3x3": sum(m.out_channels**2 for m in convs3),
        "sum_cout2_all_core_convs": sum(m.out_channels**2 for m in convs),
        "adapter_parameters_k10": sum(
            int(torch.Size(s).numel()) for k, s in adapter.items() if not k.endswith(("running_mean", "running_var"))
        ),
    }


def _print_architecture(arch: dict[str, int]) -> None:
    print(f"  architecture: core {arch['core_parameters']:,} parameters; {arch['conv3x3_layers']} 3x3 convs, "
          f"sum C_out^2 = {arch['sum_cout2_conv3x3']:,} (all core convs: {arch['sum_cout2_all_core_convs']:,}); "
          f"a K=10 adapter learns {arch['adapter_parameters_k10']:,}")


def _info_main(args: argparse.Namespace) -> int:
    from landmarks.adapter_io import ArtifactError, read_artifact
    from landmarks.hourglass import ARCHITECTURES

    if args.file is None:
        if not args.arch:
            print("error: give a FILE or --arch NAME", file=sys.stderr)
            return 2
        config = ARCHITECTURES[args.arch]()
        arch = _architecture_counts(config)
        if args.json:
            print(json.dumps({"arch": args.arch, "config": json.loads(config.to_json()), "architecture": arch}))
        else:
            print(f"architecture {args.arch!r}: {config.to_json()}")
            _print_architecture(arch)
        return 0
    try:
        art = read_artifact(args.file)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dict(art.metadata)
    kind = meta["kind"]
    info: dict[str, object] = {
        "file": str(args.file),
        "kind": kind,
        "file_bytes": args.file.stat().st_size,
        "tensor_sha256": art.sha256,
        "parameters": art.num_parameters(),
        "num_landmarks": art.num_landmarks,
        "input_size": art.config.input_size,
    }
    info["architecture"] = _architecture_counts(art.config)
    info["metadata"] = {k: v for k, v in meta.items() if k != "config"}
    info["config"] = json.loads(meta["config"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.file}: {kind}, {info['file_bytes'] / 1e6:.2f} MB, {info['parameters']:,} parameters")
    print(f"  K={art.num_landmarks}  input {art.config.input_size}x{art.config.input_size}  "
          f"tensors sha256 {art.sha256[:16]}")
    _print_architecture(info["architecture"])
    for key in sorted(info["metadata"]):
        print(f"  {key}: {info['metadata'][key]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landmarks",
        description="Object landmarks without labels: one frozen core, one small adapter per category "
                    "(Sanchez & Tzimiropoulos, NeurIPS 2019), trained here and served over gRPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module == __name__:
            _info_arguments(p)
        else:
            try:
                importlib.import_module(module).add_arguments(p)
            except ImportError as exc:  # e.g. training extra not installed in a server image
                p.set_defaults(_unavailable=f"{name} needs more packages ({exc}); "
                                            "install with: pip install 'landmark-adapters[train]'")
    return parser


# Commands that run the server's forward passes: its OpenMP settings must be in place before any
# subcommand module loads torch (see serving/__init__.py).
_SERVER_SIDE = ("serve", "bench")


def main(argv: list[str] | None = None) -> int:
    first = (sys.argv[1:] if argv is None else argv)[:1]
    if first and first[0] in _SERVER_SIDE:
        import serving  # noqa: F401  sets GOMP_SPINCOUNT on import
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(f"error: {args._unavailable}", file=sys.stderr)
        return 2
    module = _SUBCOMMANDS[args.command][0]
    if module == __name__:
        return _info_main(args)
    return importlib.import_module(module).main(args)


if __name__ == "__main__":
    sys.exit(main())
