"""landmarks detect: landmarks of images from a running server, as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from landmarks.commands import add_server_argument, client_for, print_json, rpc_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)
    parser.add_argument("--category", required=True, help="e.g. faces, cats")
    parser.add_argument("--version", default="", help="adapter version (default: the active one)")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                        help="object box in image pixels (default: the whole image)")
    parser.add_argument("--draw", type=Path,
                        help="write the image with the landmarks drawn on it (several images: NAME-0.png, ...)")
    parser.add_argument("images", nargs="+", type=Path, help="JPEG/PNG files")


def draw(image_path: Path, result, out: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.open(image_path).convert("RGB")
    pen = ImageDraw.Draw(image)
    r = max(2.0, max(image.size) / 150)
    x0, y0, x1, y1 = result.box
    pen.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=max(1, int(r / 2)))
    for i, (x, y, conf) in enumerate(result.points):
        colour = tuple(int(255 * c) for c in ((i * 0.61803) % 1, 1 - (i * 0.3819) % 1, 0.5 + 0.5 * conf))
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(0, 0, 0))
        pen.text((x + r + 1, y - r), str(i), fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


def main(args: argparse.Namespace) -> int:
    for path in args.images:
        if not path.is_file():
            print(f"error: no such image {path}", file=sys.stderr)
            return 2
    results = []
    with client_for(args) as client:
        try:
            for i, path in enumerate(args.images):
                res = client.detect(path, args.category, box=args.box, version=args.version)
                results.append({"image": str(path), **res.to_dict()})
                if args.draw:
                    out = args.draw if len(args.images) == 1 else args.draw.with_name(
                        f"{args.draw.stem}-{i}{args.draw.suffix or '.png'}")
                    draw(path, res, out)
                    results[-1]["drawn"] = str(out)
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
    print_json(results if len(results) > 1 else results[0])
    return 0
