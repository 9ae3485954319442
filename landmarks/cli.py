"""`landmarks`: one entry point, one subcommand per job.

Subcommand modules are named here by dotted path and only the chosen one is imported: `landmarks
--help` imports none of them, `landmarks detect` does not load the server or the training code,
and a server install without the training extra still runs `landmarks serve` and `landmarks info`.
Process-wide set-up a command needs (e.g. the server's OpenMP settings) belongs in its module.

The base install (ONNX Runtime, no torch) runs `serve`, `detect`, `export`, `info` and the client
commands; the training commands (and `bench`, whose reference forward is torch's) need the train
extra, `serve-ray` the ray extra: each such command checks for its extra's packages before anything
else and names the one command that installs them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

__all__ = ["EXTRAS", "build_parser", "main", "missing_extra"]

# extra -> the modules it brings that its commands import (pyproject.toml's optional-dependencies)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "scipy", "matplotlib", "yaml"),
    "ray": ("ray",),
}
# command -> the extra it needs beyond the base install
_COMMAND_EXTRAS = {"train-core": "train", "evaluate-core": "train", "adapt": "train", "evaluate": "train",
                   "calibrate": "train", "bench": "train", "serve-ray": "ray"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked (sys.modules entry None, an import hook)
        return False


def missing_extra(command: str) -> str | None:
    """The error `command` gives when its extra is not installed (naming the install command), else None."""
    extra = _COMMAND_EXTRAS.get(command)
    missing = [m for m in EXTRAS.get(extra, ()) if not _installed(m)]
    if not missing:
        return None
    return (f"landmarks {command} needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'landmark-adapters[{extra}]'")

_EPILOG = """\
examples:
  landmarks info adapters/core.safetensors           what a core or adapter file holds
  landmarks train-core --preset cpu --out runs/core  train the frozen core on LSP-extended
  landmarks evaluate-core adapters/core.safetensors --dataset lspet:../shared/data/lspet --split 9000:
"""

# name -> (module, help); each module has add_arguments(parser) and main(args) -> int
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("landmarks.commands.info", "print a core's, adapter's or network's metadata, parameter counts and size"),
    "train-core": ("training.train_core", "train the core landmark detector supervised on human pose"),
    "evaluate-core": ("training.evaluate_core", "PCK of a core on annotated pose data, with an overlay picture"),
    "adapt": ("training.adapt", "learn a new category's landmarks from unlabelled images (adapter or baseline)"),
    "evaluate": ("training.evaluate", "forward / backward / consistency errors of an adapter or baseline, with pictures"),
    "serve": ("serving.commands.serve", "run the landmark server: gRPC (inference, admin), --http-port for HTTP/JSON"),
    "serve-ray": ("serving.commands.serve_ray", "the server on a Ray cluster: replicas, each request to one holding its category"),
    "detect": ("landmarks.commands.detect", "landmarks of images, folders or globs, from a server or --local"),
    "register": ("landmarks.commands.register", "register an adapter version with a running server"),
    "unregister": ("landmarks.commands.unregister", "remove an adapter version or a whole category from a server"),
    "activate": ("landmarks.commands.activate", "make a registered adapter version active (roll back)"),
    "categories": ("landmarks.commands.categories", "list a server's categories, versions and states"),
    "calibrate": ("training.calibrate", "make an adapter servable in int8: ranges from its images, checked against fp32"),
    "export": ("landmarks.commands.export", "one category (adapter + core, folded) as an ONNX file any ONNX Runtime runs"),
    "bench": ("serving.commands.bench", "latency/throughput of a running server vs the bare and official forward"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed; only `command`'s module is imported, for its arguments."""
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
        if name != command:
            continue
        if (problem := missing_extra(name)) is not None:
            p.set_defaults(_unavailable=problem)
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as exc:  # e.g. training extra not installed in a server image
            p.set_defaults(_unavailable=f"{name} needs more packages ({exc}); "
                                        "install with: pip install 'landmark-adapters[train]'")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the subcommand is the first word: the top-level parser has no options besides --help
    command = argv[0] if argv and argv[0] in _SUBCOMMANDS else None
    parser = build_parser(command)
    # known args only: an unavailable command has no arguments, and its message beats "unrecognized"
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"error: {args._unavailable}", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.command:
        parser.print_help()
        return 0
    return importlib.import_module(_SUBCOMMANDS[args.command][0]).main(args)


if __name__ == "__main__":
    sys.exit(main())
