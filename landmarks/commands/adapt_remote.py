"""`landmarks adapt --server HOST:PORT IMAGES --category NAME`: the adaptation as a job of a running
server (its AdaptationService) instead of on this machine. The images (a folder's image files, or a
.zip) are streamed to the server; a progress bar follows the job; the registered version is printed.
The training module (training.adapt) adds these flags to `landmarks adapt` and hands over here;
without the training extra (no torch) `landmarks adapt` is this module alone (landmarks.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["SUFFIXES", "add_arguments", "files_of", "main"]

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".zip")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("on a server (a job of `landmarks serve`; works without the training extra)")
    group.add_argument("--server", default=None, metavar="HOST:PORT",
                       help="send the images to this server and train there: the job takes --category, --preset, "
                            "--steps, --num-landmarks, --names, --image-size and --activate; the rest are the server's")
    group.add_argument("--activate", action="store_true",
                       help="with --server: make the new version active if its validation passes")
    group.add_argument("--admin-token-file", default=None,
                       help="with --server: the admin token file (default: $LANDMARKS_ADMIN_TOKEN, if set)")
    group.add_argument("--tls-ca", default=None, help="with --server: PEM CA to verify the server with (TLS)")


def add_standalone_arguments(parser: argparse.ArgumentParser, missing: str) -> None:
    """`landmarks adapt` without the training extra: only --server, with the options a job takes."""
    parser.add_argument("images", nargs="?", default=None, help="folder:PATH (or a folder, or a .zip) of the photos")
    parser.add_argument("--category", default="", help="the name the new category is served under")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "quick", "paper", "smoke"), help="the job's preset")
    for flag, kind in (("--steps", int), ("--num-landmarks", int), ("--names", str), ("--image-size", int)):
        parser.add_argument(flag, type=kind, default=None, help="the job's (default: the preset's)")
    add_arguments(parser)
    parser.set_defaults(_needs_option=("server", (f"{missing}; or train on a server: landmarks adapt --server "
                                                 "HOST:PORT folder:photos/ --category NAME")))


def files_of(images: str) -> list[Path]:
    """The files to send for IMAGES: FOLDER or folder:FOLDER (its image files, recursive, sorted), or a .zip."""
    path = Path(images.removeprefix("folder:"))
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{images}: no such folder or file; give a folder of photos (folder:photos/) or a .zip")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _bar(job, width: int = 30) -> str:
    done = job.step / job.steps if job.steps else 0.0
    filled = round(done * width)
    return f"\r{job.category} [{'#' * filled}{'-' * (width - filled)}] {job.step}/{job.steps or '?'} {job.phase or job.state}"


def main(args: argparse.Namespace) -> int:
    import grpc

    from landmarks.client import LandmarkClient
    from landmarks.commands import rpc_error
    from landmarks.tokens import read_token

    if not args.images:
        print("error: give the category's images, e.g. `landmarks adapt --server HOST:PORT folder:photos/ "
              "--category mugs`", file=sys.stderr)
        return 2
    if not args.category:
        print("error: --server needs --category: the name the new category is served under", file=sys.stderr)
        return 2
    try:
        files = files_of(args.images)
        token = read_token(args.admin_token_file, "LANDMARKS_ADMIN_TOKEN")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: {args.images} holds no images ({', '.join(SUFFIXES)})", file=sys.stderr)
        return 2
    print(f"sending {len(files)} files to {args.server}", file=sys.stderr)
    with LandmarkClient(args.server, timeout=600, tls_ca=args.tls_ca, admin_token=token) as client:
        try:
            job = client.start_adaptation(args.category, files, preset=args.preset or "", steps=args.steps or 0,
                                          activate=args.activate, num_landmarks=args.num_landmarks or 0,
                                          names=args.names or "", image_size=args.image_size or 0)
            skipped = sum(job.skipped.values())
            print(f"job {job.id}: {job.images} images{f', {skipped} files skipped' if skipped else ''}",
                  file=sys.stderr)
            for state in client.watch_adaptation(job.id):
                sys.stderr.write(_bar(state))
                sys.stderr.flush()
                job = state  # the last one is the result
            sys.stderr.write("\n")
        except grpc.RpcError as exc:
            return rpc_error(exc, args.server)
        except KeyboardInterrupt:
            print(f"\nthe job goes on in the server; cancel it with DELETE /v1/adaptations/{job.id}", file=sys.stderr)
            return 130
    if job.state in ("queued", "running"):  # the stream ended first: the server is stopping
        print(f"error: the server stopped while job {job.id} was {job.state}; it resumes when the server starts "
              f"again (GET /v1/adaptations/{job.id} shows it)", file=sys.stderr)
        return 1
    if job.state != "succeeded":
        print(f"error: job {job.id} {job.state}: {job.error}", file=sys.stderr)
        return 1
    scores = ", ".join(f"{k} {v:.3g}" for k, v in sorted(job.validation.items()))
    print(f"validation on held-out images: {scores} ({'passed' if job.validation_passed else 'below the floors'})")
    print(f"int8: {'calibrated' if job.calibration_accepted else 'not calibrated (serves in fp32)'}")
    print(f"registered {job.category}/{job.version}{' (active)' if job.activated else ''}")
    return 0
