"""`AdapterRegistry.sync_store`: a registry that only reads a store follows the changes another
process's registry writes to it (serving/ray_app.py: the admin replica writes, every model replica
syncs). No Ray here: two registries on one directory."""

from __future__ import annotations

import grpc
import pytest

from serving.config import ServerConfig
from serving.errors import ServingError
from serving.metrics import Metrics
from serving.services import load_services


@pytest.fixture
def pair(store):
    cfg = ServerConfig(adapters_dir=store, torch_threads=1, batch_workers=1)
    writer, reader = load_services(cfg, Metrics()), load_services(cfg, Metrics())
    yield writer.registry, reader.registry
    for s in (writer, reader):
        s.batcher.close(timeout=1.0)


def active(registry, category: str) -> str:
    with registry.acquire(category) as lease:
        return lease.entry.version


def test_a_reader_follows_register_activate_and_unregister(pair, artifacts, store):
    writer, reader = pair
    assert reader.sync_store() is False  # nothing changed
    writer.register("birds", "v1", data=artifacts.extra["birds-v1"].read_bytes())
    with pytest.raises(ServingError) as err:
        reader.acquire("birds")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert reader.sync_store("faces") is False  # one category's files only: birds is not looked at
    assert reader.sync_store("birds") is True
    assert active(reader, "birds") == "v1"

    writer.register("birds", "v2", data=artifacts.extra["birds-v2"].read_bytes())  # activates v2
    reader.sync_store()
    assert active(reader, "birds") == "v2"
    writer.set_active("birds", "v1")
    reader.sync_store()
    assert active(reader, "birds") == "v1"

    held = reader.acquire("birds", "v2")  # a request still running on v2 when it goes
    writer.unregister("birds", "v2")
    writer.unregister("cats")  # a shipped file: unregistered by remembering its sha256
    assert reader.sync_store() is True
    with pytest.raises(ServingError) as err:
        reader.acquire("birds", "v2")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert held.entry.retired and held.adapter is not None  # it finishes on what it leased
    held.release()
    with pytest.raises(ServingError):
        reader.acquire("cats")
    assert [s.name for s in reader.list()] == [s.name for s in writer.list()] == ["birds", "faces"]

    writer.unregister("birds")
    reader.sync_store()
    assert [s.name for s in reader.list()] == ["faces"]
    assert reader.sync_store() is False


def test_a_broken_file_is_failed_once_and_not_retried(pair, store):
    _, reader = pair
    (store / "owls").mkdir()
    (store / "owls" / "v1.safetensors").write_bytes(b"not an adapter")
    assert reader.sync_store() is True
    (status,) = [s for s in reader.list() if s.name == "owls"]
    assert status.state == "FAILED" and status.error
    assert reader.sync_store() is False  # known, even though bad: not validated again every poll
    with pytest.raises(ServingError) as err:
        reader.acquire("owls")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
