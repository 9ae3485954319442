"""landmarks detect: landmarks of images (files, folders, globs) from a running server, or in this process
with --local, as JSON (one image) or JSON lines (one object per image), optionally drawn."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_EPILOG = """\
examples:
  landmarks detect --category faces examples/face.jpg --draw face.png    one image: pretty JSON
  landmarks detect --category cats photos/ --draw-dir drawn/ > cats.jsonl a folder: one JSON line per image
  landmarks detect --category cats 'photos/**/*.jpg' > cats.jsonl        a glob (quoted: expanded here, recursively)
  landmarks detect --local --category shoes examples/shoe.jpg            no server: the adapter runs in this process

Each JSON line is {"image": PATH, "category", "version", "adapter_sha256", "box", "landmarks": [{"name",
"x", "y", "confidence"}, ...], "timings"} (--local: no version or timings); an image the server cannot
read gives {"image": PATH, "error": {"code", "message"}} and the others go on (exit status 1).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("images", nargs="+", metavar="IMAGE_DIR_OR_GLOB",
                        help="JPEG/PNG/WebP/BMP files, folders of them (sorted; --recursive for subfolders) or glob "
                             "patterns (quote them to have them expanded here, with ** for any depth)")
    parser.add_argument("--category", required=True, help="e.g. faces, cats, shoes (landmarks categories lists them)")
    parser.add_argument("--version", default="", help="adapter version (default: the active one)")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                        help="object box in image pixels, the same for every image (default: the whole image)")
    parser.add_argument("--recursive", "-r", action="store_true", help="a folder's subfolders too")
    parser.add_argument("--jsonl", action="store_true",
                        help="JSON lines even for one image (the default for folders, globs and several images)")
    parser.add_argument("--draw", type=Path, metavar="FILE",
                        help="one image: write it with the landmarks drawn on it (several: FILE-0.png, FILE-1.png ...)")
    parser.add_argument("--draw-dir", type=Path, metavar="DIR",
                        help="write one picture per image into DIR, named after the image (NAME.png)")
    local = parser.add_argument_group("in this process, no server (--local)")
    local.add_argument("--local", action="store_true",
                       help="run the adapter here (landmarks.Detector) instead of asking a server")
    local.add_argument("--adapters", type=Path, default=None,
                       help="adapters directory to read the category from (default: the repository's adapters/, "
                            "or $LANDMARKS_ADAPTERS)")
    local.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default %(default)s; cuda needs "
                       "onnxruntime-gpu)")
    local.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"],
                       help="auto (default): what the default server runs, int8 for a calibrated adapter on a CPU "
                            "with 8-bit dot products, else fp32")
    add_server_argument(parser)


def expand(patterns: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders and globs -> image files, in the order given (each folder and glob sorted);
    ValueError naming what matched nothing."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            images = sorted(p for p in walk if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ValueError(f"{pattern} holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files"
                                 + ("" if recursive else " (--recursive looks in its subfolders)"))
            found += images
        elif glob.has_magic(pattern):
            images = sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                            if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ValueError(f"no image matches {pattern}")
            found += images
        else:
            raise ValueError(f"no such image, folder or glob match: {pattern}")
    return found


def draw(image_path: Path, record: dict, out: Path) -> None:
    """The image with its landmarks (a JSON record: box, landmarks with x, y, confidence), numbered from 1."""
    from PIL import Image, ImageDraw

    image = Image.open(image_path).convert("RGB")
    pen = ImageDraw.Draw(image)
    r = max(2.0, max(image.size) / 150)
    x0, y0, x1, y1 = record["box"]
    pen.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=max(1, int(r / 2)))
    for i, p in enumerate(record["landmarks"]):
        x, y, conf = p["x"], p["y"], p["confidence"]
        colour = tuple(int(255 * c) for c in ((i * 0.61803) % 1, 1 - (i * 0.3819) % 1, 0.5 + 0.5 * conf))
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(0, 0, 0))
        pen.text((x + r + 1, y - r), str(i + 1), fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


def _drawn_names(images: list[Path], args: argparse.Namespace) -> Iterator[Path | None]:
    taken: set[str] = set()
    for i, path in enumerate(images):
        if args.draw_dir is not None:
            name, n = path.stem, 1
            while name in taken:  # same name in two folders: photo.png, photo-2.png
                n += 1
                name = f"{path.stem}-{n}"
            taken.add(name)
            yield args.draw_dir / f"{name}.png"
        elif args.draw is not None:
            yield args.draw if len(images) == 1 else args.draw.with_name(
                f"{args.draw.stem}-{i}{args.draw.suffix or '.png'}")
        else:
            yield None


class _ImageError(Exception):
    """One image could not be read: report it on its line and go on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _remote(args: argparse.Namespace, client) -> Callable[[Path], dict]:
    import grpc

    def detect(path: Path) -> dict:
        try:
            return client.detect(path, args.category, box=args.box, version=args.version).to_dict()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details().startswith("image"):
                raise _ImageError(exc.code().name, exc.details()) from None
            raise

    return detect


def _local(args: argparse.Namespace) -> Callable[[Path], dict]:
    from landmarks.detector import Detector

    detector = Detector.load(args.category, adapters=args.adapters, version=args.version or None, device=args.device,
                             precision=args.precision)

    def detect(path: Path) -> dict:
        try:
            return detector.detect(path, box=args.box).to_dict()
        except ValueError as exc:
            raise _ImageError("INVALID_ARGUMENT", str(exc)) from None

    return detect


def main(args: argparse.Namespace) -> int:
    try:
        images = expand(args.images, args.recursive)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = args.jsonl or len(images) > 1 or not Path(args.images[0]).is_file()
    if args.local:
        try:
            return _run(_local(args), images, args, lines)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    import grpc

    with client_for(args) as client:
        try:
            return _run(_remote(args, client), images, args, lines)
        except grpc.RpcError as exc:
            rc = rpc_error(exc, args.server)
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                print("hint: --local runs the adapter in this process, no server needed", file=sys.stderr)
            return rc


def _run(detect: Callable[[Path], dict], images: list[Path], args: argparse.Namespace, lines: bool) -> int:
    failed = 0
    for path, drawn in zip(images, _drawn_names(images, args)):
        try:
            record = {"image": str(path), **detect(path)}
        except _ImageError as exc:
            failed += 1
            record = {"image": str(path), "error": {"code": exc.code, "message": exc.message}}
            if not lines:
                print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
                return 1
        else:
            if drawn is not None:
                draw(path, record, drawn)
                record["drawn"] = str(drawn)
        if lines:
            print(json.dumps(record), flush=True)  # streamed: a long folder shows progress, a pipe gets each line
        else:
            print_json(record)
    if failed:
        print(f"error: {failed} of {len(images)} images could not be read (their lines say why)", file=sys.stderr)
    return 1 if failed else 0
