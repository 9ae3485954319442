"""landmarks serve-ray: the landmark server on a Ray cluster (Ray Serve), for more categories and
clients than one machine holds. Clients do not change: the same landmarks.v1 API and gRPC health
on --port. Needs the ray extra: pip install 'landmark-adapters[ray]'."""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as `landmarks serve` (docs/benchmark.md)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from a cluster started here

import argparse
import dataclasses
import logging
import signal
import socket
import sys
import threading

from serving import config
from serving.config import DEFAULT_PORT

# the ServerConfig flags that mean the same here as for `landmarks serve` (serving/config.py writes
# them); the replicas' threads and batch workers follow --replica-cpus instead
SERVER_FLAGS = ("host", "adapters_dir", "core_path", "device", "backend", "precision", "cache_bytes", "max_adapter_bytes",
                "max_image_pixels", "min_image_side", "max_batch_items", "max_batch_size", "max_queue_delay_ms",
                "max_queue", "max_message_bytes", "enable_admin", "allowed_register_dirs", "admin_token",
                "inference_token", "tls_cert", "tls_key", "tls_client_ca", "adaptation_workers", "adaptation_threads",
                "adaptation_nice", "adaptation_device", "max_adaptation_images", "min_adaptation_images",
                "max_adaptation_image_bytes", "max_adaptation_image_pixels", "max_adaptation_upload_bytes",
                "adaptation_quota_bytes")

_EPILOG = """\
how it works (docs/scale.md): this process answers gRPC on --host:--port (127.0.0.1 unless told
otherwise; TLS and tokens as `landmarks serve`), names each request's model "category@version" and
sends it, with the client's deadline, through Ray Serve's model multiplexing to a replica that already
holds that category folded (else to the least busy, which folds it and keeps at most
--max-categories-per-replica). Each replica loads the core once. Admin calls (register, activate,
unregister) go to one admin replica, which validates and writes the shared --adapters directory as
`landmarks serve` does; replicas re-read it every --sync-s seconds, and at once when asked for a
category or version they do not know. Adaptation jobs (AdaptationService) train as Ray tasks on any
node with the resources (--adaptation-threads CPUs, --adaptation-gpus GPUs) and register through the
admin replica.

examples:
  landmarks serve-ray --replicas 2 --port 50051              local cluster on this machine
  landmarks serve-ray --address auto --min-replicas 1 --max-replicas 8 --host 0.0.0.0 \
      --tls-cert server.pem --tls-key server.key --admin-token-file admin.token
  landmarks serve-ray --address auto --attach --host 0.0.0.0 ...   one more front (another node)
  landmarks detect --server localhost:50051 --category cats examples/cat.jpg
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="gRPC port on --host (default %(default)s)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting one here")
    parser.add_argument("--attach", action="store_true",
                        help="with --address: serve another front for the application already running on that "
                             "cluster (one per node behind a load balancer, for more clients); deploys nothing, "
                             "and stopping it leaves the application running")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local cluster started here (default: the machine's)")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--replicas", type=int, default=2, help="model replicas (default %(default)s)")
    scale.add_argument("--min-replicas", type=int, default=None,
                       help="autoscale between --min-replicas and --max-replicas instead of a fixed --replicas")
    scale.add_argument("--max-replicas", type=int, default=None,
                       help="upper autoscaling bound; Ray Serve adds replicas while each has more than "
                            "--target-ongoing requests in flight")
    scale.add_argument("--target-ongoing", type=float, default=4.0,
                       help="autoscaling target: requests in flight per replica (default %(default)s)")
    scale.add_argument("--max-categories-per-replica", type=int, default=16,
                       help="folded categories a replica keeps; the least recently used goes (default %(default)s)")
    scale.add_argument("--replica-cpus", type=float, default=1.0,
                       help="CPUs each replica reserves, and its torch threads (default %(default)s)")
    scale.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs each replica reserves (default: 1 with --device cuda, else 0; a fraction "
                            "shares a GPU between replicas)")
    scale.add_argument("--max-ongoing", type=int, default=32,
                       help="requests a replica takes at once, so its batcher can batch them (default %(default)s)")
    scale.add_argument("--sync-s", type=float, default=1.0,
                       help="seconds between a replica's reads of the store: an admin change is served by every "
                            "replica within this (default %(default)s)")
    parser.add_argument("--adaptation-gpus", type=float, default=0.0,
                        help="GPUs each adaptation job's Ray task asks for, so a cluster with GPU workers trains "
                             "there (a fraction shares one; default %(default)s)")
    # as `landmarks serve`: --adapters (here the shared store every node reads and the admin replica
    # writes), --core, the model, request, batching and security flags
    config.add_arguments(parser, SERVER_FLAGS)
    parser.add_argument("--log-level", default="INFO")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        print(f"error: serve-ray needs Ray Serve ({exc}); install it with: pip install 'landmark-adapters[ray]'",
              file=sys.stderr)
        return 2
    from serving.ray_app import APP_NAME, RayOptions, build_app, handles
    from serving.ray_front import start_front

    try:
        cfg = config.from_args(args, SERVER_FLAGS)
        cfg = dataclasses.replace(cfg, adapters_dir=cfg.adapters_dir.resolve(),  # replicas may run elsewhere
                                  core_path=cfg.core_path.resolve() if cfg.core_path else None)
        if args.attach:  # the first front runs the jobs: two would both resume the same interrupted ones
            cfg = dataclasses.replace(cfg, adaptation_workers=0)
        opts = RayOptions(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                          target_ongoing_requests=args.target_ongoing,
                          max_categories_per_replica=args.max_categories_per_replica, replica_cpus=args.replica_cpus,
                          replica_gpus=args.replica_gpus if args.replica_gpus is not None
                          else float(cfg.device.startswith("cuda")),
                          max_ongoing_requests=args.max_ongoing, sync_s=args.sync_s)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cfg.resolved_core_path.is_file():
        print(f"error: no core file at {cfg.resolved_core_path}; pass --adapters DIR or --core FILE", file=sys.stderr)
        return 2
    if args.attach and args.address is None:
        print("error: --attach joins a running application: give its cluster with --address (e.g. auto)",
              file=sys.stderr)
        return 2
    from serving.memory import cap_malloc_arenas

    cap_malloc_arenas()  # the front's process (serving.memory)
    started_here = args.address is None
    ray.init(address=args.address, num_cpus=args.num_cpus if started_here else None, include_dashboard=False,
             configure_logging=False)
    try:
        # no gRPC proxy: this process is the front; Ray's HTTP proxy still binds a port, so a loopback one
        if not args.attach:
            serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
            serve.run(build_app(cfg, opts, ingress=False), name=APP_NAME, route_prefix=None)
        front = start_front(cfg, args.port, *handles(), sync_s=opts.sync_s, adaptation_gpus=args.adaptation_gpus)
    except Exception as exc:  # noqa: BLE001  e.g. a replica that cannot load the core, a port in use
        print(f"error: the Ray Serve application did not start: {exc}", file=sys.stderr)
        _stop(serve, ray, started_here, args.attach)
        return 2
    if cfg.admin_token is None and cfg.enable_admin and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "the admin service is open to the network (no --admin-token-file, not --no-admin)")
    scaling = (f"{opts.min_replicas}..{opts.max_replicas} replicas (autoscaling)" if opts.max_replicas is not None
               else f"{opts.replicas} replicas")
    print(f"landmarks ray server listening on {config.join_host_port(cfg.host, front.port)} "
          f"({'TLS' if cfg.tls else 'plaintext'}, {scaling}, up to {opts.max_categories_per_replica} categories "
          f"each, store {cfg.adapters_dir}, cluster {ray.get_runtime_context().gcs_address})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    front.stop(cfg.grace_s)
    _stop(serve, ray, started_here, args.attach)
    print("landmarks ray server stopped", flush=True)
    return 0


def _stop(serve, ray, started_here: bool, attached: bool = False) -> None:
    from serving.ray_app import APP_NAME

    try:
        if attached:
            pass  # another front's application: leave it running
        elif started_here:
            serve.shutdown()  # the whole Serve instance of the cluster this command started
        else:
            serve.delete(APP_NAME)  # a cluster others may use: only this application
    finally:
        ray.shutdown()
