"""`landmarks serve-ray`'s application on a real local Ray cluster (marked `ray`: deselected by default,
`.ci/run` runs them with `pytest -m ray`). One cluster for the module (ray.init(num_cpus=2); starting
one costs tens of seconds on a busy 2-core machine), two model replicas, a tiny synthetic store.

What the client sees is what it would see from `landmarks serve`: the same points, codes and health;
the trailing metadata `landmarks-held` says whether the replica that answered already held the category.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from landmarks.client import DetectResult, LandmarkClient
from landmarks.hardware import cpu_int8_flags
from serving.backends import DEFAULT_BACKEND
from tests.serving.helpers import calibrate_for_int8, make_adapter, make_core, png_bytes, start_server

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.ray

CATEGORIES = {"cats": (4, 1), "faces": (6, 2), "shoes": (3, 3)}  # name -> (K, seed)
SYNC_S = 0.5
TOKENS = {"token": "ray-inference", "admin_token": "ray-admin"}  # what the client sends


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    store = root / "adapters"
    store.mkdir()
    core = store / "core.safetensors"
    make_core(core)
    for name, (k, seed) in CATEGORIES.items():
        make_adapter(store / f"{name}.safetensors", core, name, k=k, seed=seed)
    extra = {f"birds-{v}": make_adapter(root / "extra" / f"birds-{v}.safetensors", core, "birds", k=3, seed=seed)
             for v, seed in (("v1", 7), ("v2", 8))}
    calibrate_for_int8(extra["birds-v2"], core)  # the replicas' default precision serves it in int8 where it can
    return store, extra


@pytest.fixture(scope="module")
def ray_app(ray_store):
    """What `landmarks serve-ray` runs: the replicas and the admin replica on Ray Serve, no gRPC proxy;
    -> (replicas, admin) deployment handles."""
    from serving.ray_app import APP_NAME, RayOptions, build_app, handles

    store, _ = ray_store
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    t0 = time.monotonic()
    # 2 replicas x 1 CPU, and 1 (logical) CPU for an adaptation job's task
    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        serve.run(build_app(_config(store), RayOptions(replicas=2, max_categories_per_replica=2, sync_s=SYNC_S),
                            ingress=False), name=APP_NAME, route_prefix=None)
        print(f"\nRay cluster + Serve app up in {time.monotonic() - t0:.1f} s")
        yield handles()
    finally:
        serve.shutdown()
        ray.shutdown()


def _config(store, **overrides):
    from serving.config import ServerConfig

    return ServerConfig(adapters_dir=store, torch_threads=1, admin_token=TOKENS["admin_token"],
                        inference_token=TOKENS["token"], **overrides)


@pytest.fixture(scope="module")
def ray_port(ray_store, ray_app):
    """The front `serve-ray` runs, on its defaults (127.0.0.1, plaintext, the tokens)."""
    from serving.ray_front import start_front

    front = start_front(_config(ray_store[0]), 0, *ray_app, sync_s=SYNC_S)
    yield front.port
    front.stop(grace=0)


@pytest.fixture
def client(ray_port):
    with LandmarkClient(f"127.0.0.1:{ray_port}", timeout=60, **TOKENS) as c:
        yield c


def detect(client: LandmarkClient, image: bytes, category: str) -> tuple[DetectResult, dict[str, str]]:
    reply, call = client.inference.Detect.with_call(client.request(image, category), timeout=60,
                                                    metadata=client._inference_md)
    return DetectResult.from_proto(reply), dict(call.trailing_metadata() or ())


def test_health_and_three_categories_answer_what_the_single_server_answers(client, ray_store):
    store, _ = ray_store
    assert client.health_status() == "SERVING"
    assert client.health_status("landmarks.v1.LandmarkService") == "SERVING"
    single = start_server(store)  # the same store, one process
    try:
        with LandmarkClient(f"127.0.0.1:{single.port}", timeout=60) as local:
            for i, name in enumerate(CATEGORIES):
                image = png_bytes(64, 48, seed=i)
                got, _ = detect(client, image, name)
                want = local.detect(image, name)
                assert (got.category, got.version, got.names) == (want.category, "shipped", want.names)
                assert got.adapter_sha256 == want.adapter_sha256
                np.testing.assert_allclose(np.array(got.points), np.array(want.points), atol=1e-3)
            images = [png_bytes(40, 40, seed=i) for i in range(4)]
            cats = ["faces", "cats", "faces", "shoes"]
            got_batch = client.detect_batch(images, cats)  # split by category across replicas, in order
            for g, w in zip(got_batch, local.detect_batch(images, cats)):
                assert g.category == w.category
                np.testing.assert_allclose(np.array(g.points), np.array(w.points), atol=1e-3)
            errors = []
            for c in (client, local):  # an unknown category in a batch: the same code and message
                with pytest.raises(grpc.RpcError) as err:
                    c.detect_batch(images[:3], ["cats", "faces", "nope"])
                errors.append((err.value.code(), err.value.details()))
            assert errors[0] == errors[1], errors
    finally:
        single.shutdown(grace=0)
    with pytest.raises(grpc.RpcError) as err:
        client.detect(png_bytes(), "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no adapter registered for 'nope'" in err.value.details()


def test_tokens_as_on_the_single_server(ray_port):
    target = f"127.0.0.1:{ray_port}"
    with LandmarkClient(target, timeout=60) as anonymous, \
            LandmarkClient(target, timeout=60, token=TOKENS["token"], admin_token=TOKENS["token"]) as inference:
        assert anonymous.health_status() == "SERVING"  # health is never protected
        with pytest.raises(grpc.RpcError) as err:
            anonymous.detect(png_bytes(), "cats")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "needs a token" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            anonymous.detect_batch([png_bytes()], ["cats"])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(inference.detect(png_bytes(), "cats").points) == 4
        with pytest.raises(grpc.RpcError) as err:  # the inference token cannot register
            inference.register("birds", "v9", b"anything")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_registered_at_run_time_is_served_then_activate_and_unregister_reach_every_replica(client, ray_store):
    _, extra = ray_store
    image = png_bytes(40, 40, seed=5)
    t0 = time.monotonic()
    client.register("birds", "v1", extra["birds-v1"])
    got, _ = detect(client, image, "birds")  # the next request: the replica reads the store if it must
    assert (got.category, got.version, len(got.points)) == ("birds", "v1", 3)
    print(f"\nregister -> served: {(time.monotonic() - t0) * 1e3:.0f} ms")
    client.register("birds", "v2", extra["birds-v2"])  # activates v2
    versions = {detect(client, image, "birds")[0].version for _ in range(6)}  # both replicas, whichever answers
    assert versions == {"v2"}
    int8 = DEFAULT_BACKEND == "onnxruntime" and bool(cpu_int8_flags())
    birds = next(c for c in client.categories() if c.name == "birds")
    assert {v.version: v.precision for v in birds.versions} == {"v1": "fp32", "v2": "int8" if int8 else "fp32"}
    # read-your-writes through the front that made the change, though a replica's view of the store may
    # lag by --sync-s: it routes by the version it knows is active and says so in the request
    client.activate("birds", "v1")
    assert {detect(client, image, "birds")[0].version for _ in range(6)} == {"v1"}
    client.activate("birds", "v2")
    assert {detect(client, image, "birds")[0].version for _ in range(6)} == {"v2"}
    client.unregister("birds")
    with pytest.raises(grpc.RpcError) as err:  # at once, from the front that unregistered it
        client.detect(image, "birds")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    time.sleep(2 * SYNC_S)  # every replica has re-read the store by now
    for _ in range(6):
        with pytest.raises(grpc.RpcError) as err:
            client.detect(image, "birds")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:  # the single server's validation: a broken file is refused
        client.register("broken", "v1", b"not an adapter")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_share_of_requests_served_by_a_replica_holding_the_category_is_measured(client):
    """Steady state: once every category is folded somewhere and the router has heard so, a request goes
    to a replica that holds its category. Reaching it is not timed: the replicas' reports travel through
    Ray's controller, and until they arrive the router places a category by how few models a replica
    holds, which can fold it a second time and evict another (a slow CI machine once read 21 of 30)."""
    images = [png_bytes(48, 48, seed=i) for i in range(3)]
    names = list(CATEGORIES)
    settling = []  # rounds of one request per category, until one round is all held (at most 30 rounds)
    while len(settling) < 30:
        metas = [detect(client, images[0], name)[1] for name in names]
        settling.append([(n, m["landmarks-replica"][-6:], m["landmarks-held"]) for n, m in zip(names, metas)])
        if all(m["landmarks-held"] == "1" for m in metas):
            break
        time.sleep(0.5)
    rounds = len(settling)
    seen = []
    for i in range(30):
        _, meta = detect(client, images[i % 3], names[i % 3])
        seen.append((names[i % 3], meta["landmarks-replica"][-6:], meta["landmarks-held"]))
    share = sum(held == "1" for *_, held in seen) / len(seen)
    print(f"\nmultiplexing: settled after {rounds} round(s); then {share:.0%} of {len(seen)} requests served by a "
          f"replica that held the category; 3 categories, 2 replicas x 2 categories")
    assert share >= 0.8, f"(category, replica, held) while settling: {settling}; then per request: {seen}"


def test_a_replica_killed_mid_traffic_loses_no_request_that_the_client_retries(client):
    _, meta = detect(client, png_bytes(), "cats")
    victim = ray.get_actor(f"SERVE_REPLICA::landmarks#LandmarkReplica#{meta['landmarks-replica']}", namespace="serve")
    answered: list[float] = []  # when each request was answered
    seen: list[str] = []  # what the client saw before a retry succeeded
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            with lock:
                sent[0] += 1
            for _attempt in range(120):
                try:
                    client.detect(png_bytes(40, 40, seed=i), list(CATEGORIES)[(w + i) % 3])
                except grpc.RpcError as exc:
                    with lock:
                        seen.append(f"{exc.code().name}: {exc.details()[:100]}")
                    time.sleep(0.25)
                    continue
                with lock:
                    answered.append(time.monotonic())
                break
            i += 1

    big = [png_bytes(256, 256, seed=i) for i in range(24)]
    batch_seen: list[str] = []

    def long_batch() -> None:  # a DetectBatch for the victim's category, likely in flight at the kill
        with lock:
            sent[0] += 1
        for _attempt in range(120):
            try:
                client.detect_batch(big, "cats")
            except grpc.RpcError as exc:
                batch_seen.append(f"{exc.code().name}: {exc.details()[:100]}")
                time.sleep(0.25)
                continue
            with lock:
                answered.append(time.monotonic())
            return

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    threads.append(threading.Thread(target=long_batch))
    threads[-1].start()
    time.sleep(0.2)
    killed = time.monotonic()
    ray.kill(victim, no_restart=True)  # Serve starts a replacement; the other replica serves meanwhile
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(300)
    after = sum(t > killed for t in answered)
    print(f"\nkilled replica {meta['landmarks-replica']} mid-traffic: {len(answered)} of {sent[0]} requests answered "
          f"({after} after the kill); the client retried {len(seen)} Detect answers {sorted(set(seen))[:3]} "
          f"and {len(batch_seen)} DetectBatch answers {batch_seen[:2]}")
    assert len(answered) == sent[0] and after > 0
    assert all(s.startswith("UNAVAILABLE") for s in seen + batch_seen), seen + batch_seen


def test_admin_writes_one_shared_store(client, ray_store, tmp_path):
    store, extra = ray_store
    client.register("birds", "v1", extra["birds-v1"])
    try:
        assert (store / "birds" / "v1.safetensors").is_file()
        names = {c.name for c in client.categories()}
        assert names == {*CATEGORIES, "birds"}
        info = client.server_info()
        assert info.versions["ray"] == ray.__version__ and info.ready
        # the replicas' folded-weight caches, summed by the admin from their reports
        assert int(info.versions["serve.replicas_reporting"]) >= 1 and info.cache.capacity_bytes > 0
        print(f"\nServerInfo: {info.versions['serve.replicas_reporting']} replicas reporting, cache "
              f"{info.cache.entries} entries, {info.cache.hits} hits, {info.cache.misses} misses")
    finally:
        client.unregister("birds")
    assert not (store / "birds").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_kuberay_manifest_is_a_valid_serve_config_that_builds_the_app():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serving.ray_app import SERVICER_FUNCTIONS, app_builder

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    service = next(yaml.safe_load_all((root / "deploy" / "kuberay" / "rayservice.yaml").read_text()))
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema(**config)
    assert config["grpc_options"]["grpc_servicer_functions"] == SERVICER_FUNCTIONS
    (app,) = config["applications"]
    app_builder(app["args"])


def test_errors_carry_their_details_through_the_front(client):
    """A bad DetectBatch item's index is the client's, though the ingress sent each category's items to a
    replica as a sub-batch of its own (the cats' item 1 is the client's item 2)."""
    from landmarks.client import error_details

    with pytest.raises(grpc.RpcError) as err:
        client.detect_batch([png_bytes(48, 40), png_bytes(48, 40), b"not an image"], ["cats", "faces", "cats"])
    details = error_details(err.value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (details.reason, details.domain, details.index) == ("IMAGE_UNDECODABLE", "landmarks.v1", 2)
    assert details.fields[0][0] == "requests[2].image.encoded"
    assert err.value.details().startswith("requests[2].image.encoded: ")
    with pytest.raises(grpc.RpcError) as err:
        client.detect(png_bytes(48, 40), "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_details(err.value).reason == "CATEGORY_NOT_FOUND"


def test_the_front_listens_on_loopback_only_unless_told(ray_port):
    """serve-ray's default --host is 127.0.0.1: the port is not reachable on the machine's other addresses."""
    from serving.config import ServerConfig

    assert ServerConfig().host == "127.0.0.1"
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) == ray_port:  # LISTEN
                listening.add(address)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, or ::ffff:127.0.0.1 on a v6 socket
    assert listening and listening <= loopback, f"listening on {listening} (hex addresses), not 127.0.0.1 alone"


def test_the_clients_deadline_bounds_the_replicas_work(client, ray_app):
    """The front passes the client's remaining time on: an expired call is answered DEADLINE_EXCEEDED and
    the replica drops work whose deadline has passed instead of computing it."""
    from landmarks.v1 import landmarks_pb2 as pb

    replicas, _ = ray_app
    request = client.request(png_bytes(48, 40), "cats")
    code, payload, _, _ = replicas.options(multiplexed_model_id="cats@").detect.remote(
        "Detect", request.SerializeToString(), 0.0).result(timeout_s=60)
    assert code == "DEADLINE_EXCEEDED", code
    assert len(client.detect(png_bytes(48, 40), "cats").points) == 4  # (folded: the next one is quick)
    with pytest.raises(grpc.RpcError) as err:
        client.inference.Detect(request, timeout=0.001, metadata=client._inference_md)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    code, payload, _, _ = replicas.options(multiplexed_model_id="cats@").detect.remote(
        "Detect", request.SerializeToString(), 30.0).result(timeout_s=60)
    assert code == "" and len(pb.DetectResponse.FromString(payload).landmarks) == 4


def test_tls_and_tokens_on_the_front(ray_store, ray_app, tmp_path):
    """--tls-cert/--tls-key on serve-ray: the front speaks TLS with the same tokens; plaintext is refused."""
    from serving.ray_front import start_front
    from tests.serving.helpers import self_signed_cert

    certs = self_signed_cert(tmp_path)
    front = start_front(_config(ray_store[0], tls_cert=certs / "cert.pem", tls_key=certs / "key.pem"), 0,
                        *ray_app, sync_s=SYNC_S)
    target = f"127.0.0.1:{front.port}"
    try:
        with LandmarkClient(target, timeout=60, tls_ca=certs / "cert.pem", **TOKENS) as c:
            assert c.health_status() == "SERVING"
            assert len(c.detect(png_bytes(48, 40), "faces").points) == 6
        with LandmarkClient(target, timeout=60, tls_ca=certs / "cert.pem") as c:
            with pytest.raises(grpc.RpcError) as err:
                c.detect(png_bytes(48, 40), "faces")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with LandmarkClient(target, timeout=5, **TOKENS) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.detect(png_bytes(48, 40), "faces")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        front.stop(grace=0)


def test_reflection_v1_and_health_watch_on_the_front(ray_port):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2

    from serving.reflection import V1

    with grpc.insecure_channel(f"127.0.0.1:{ray_port}") as channel:
        info = channel.stream_stream(f"/{V1}/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        (reply,) = list(info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
        names = {s.name for s in reply.list_services_response.service}
        assert {"landmarks.v1.LandmarkService", "landmarks.v1.AdminService", "grpc.health.v1.Health", V1} <= names
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_an_adaptation_job_trains_as_a_ray_task_and_the_replicas_serve_it(client, ray_store):
    """AdaptationService on the front: the smoke preset on ten small photos, trained by a Ray task,
    registered through the admin replica, then detected by the replicas like any registration."""
    from tests.serving.test_adaptations import PHOTOS, photo

    store, _ = ray_store
    job = client.start_adaptation("mugs", PHOTOS, preset="smoke", num_landmarks=3, activate=True)
    assert job.state == "queued" and job.images == 10
    seen = list(client.watch_adaptation(job.id, timeout=300))
    done = seen[-1]
    try:
        assert done.state == "succeeded", done.error
        assert any(s.state == "running" for s in seen) and done.version == f"job-{job.id}" and done.activated
        assert (store / ".jobs" / job.id / "samples.png").is_file()  # the rest of its files deleted
        result = client.detect(photo(7), "mugs")
        assert result.version == done.version and len(result.points) == 3
    finally:
        client.unregister("mugs")
