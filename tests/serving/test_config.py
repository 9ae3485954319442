"""ServerConfig: the flags are generated from its fields, and every value is checked before loading."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from serving import config
from serving.config import MIB, ServerConfig


def parse(*argv: str) -> ServerConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(list(argv)))


def test_no_flags_give_the_dataclass_defaults(monkeypatch):
    monkeypatch.delenv("LANDMARKS_TOKEN", raising=False)
    monkeypatch.delenv("LANDMARKS_ADMIN_TOKEN", raising=False)
    assert parse() == ServerConfig()


def test_flags_map_to_fields_with_their_units(tmp_path):
    token = tmp_path / "admin.token"
    token.write_text("s3cret\n")
    cfg = parse("--cache-mb", "5", "--max-adapter-mb", "2", "--max-batch", "4", "--threads", "1",
                "--no-lone-on-lead", "--allow-path", str(tmp_path), "--allow-path", "/x",
                "--admin-token-file", str(token), "--admin-port", "0", "--grace", "2.5")
    assert cfg.cache_bytes == 5 * MIB and cfg.max_adapter_bytes == 2 * MIB and cfg.max_batch_size == 4
    assert cfg.torch_threads == 1 and cfg.lone_on_lead is False and cfg.grace_s == 2.5
    assert cfg.allowed_register_dirs == (tmp_path, config.Path("/x")) and cfg.admin_token == "s3cret"
    assert cfg.batching.max_batch_size == 4 and cfg.admin_port == 0


def test_every_field_but_the_test_switch_has_a_flag():
    flagged = {f.name for f in dataclasses.fields(ServerConfig) if f.metadata}
    assert flagged == {f.name for f in dataclasses.fields(ServerConfig)} - {"load_in_background"}


@pytest.mark.parametrize("argv", [["--max-batch", "0"], ["--max-queue", "0"], ["--batch-workers", "0"],
                                  ["--max-queue-delay-ms", "-1"], ["--cache-mb", "0"], ["--port", "70000"],
                                  ["--threads", "0"], ["--workers", "0"], ["--grace", "-1"],
                                  ["--no-admin", "--admin-port", "0"], ["--tls-cert", "c.pem"]])
def test_bad_values_fail_before_anything_loads(argv):
    with pytest.raises(ValueError):
        parse(*argv)


def test_serve_refuses_bad_values_without_loading(tmp_path, capsys):
    from landmarks.cli import main

    assert main(["serve", "--adapters", str(tmp_path / "none"), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_another_command_takes_a_subset_of_the_flags(tmp_path, monkeypatch):
    """`serve-ray` shares the model, request, batching and security flags with `serve` (their defaults,
    units and token files), not the single server's ports and threads."""
    from serving.commands.serve_ray import SERVER_FLAGS, add_arguments

    monkeypatch.delenv("LANDMARKS_TOKEN", raising=False)
    monkeypatch.delenv("LANDMARKS_ADMIN_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--cache-mb", "10", "--adapters", str(tmp_path), "--inference-token-file", str(token),
                              "--replicas", "3", "--port", "6000", "--precision", "fp32"])
    cfg = config.from_args(args, SERVER_FLAGS)
    assert (cfg.cache_bytes, cfg.adapters_dir, cfg.inference_token) == (10 * MIB, tmp_path, "s3cret")
    assert cfg.precision == "fp32" and ServerConfig.precision == "auto"
    assert (cfg.port, cfg.max_workers) == (ServerConfig.port, ServerConfig.max_workers)  # serve's own: defaults
    assert (args.replicas, args.port) == (3, 6000)
    with pytest.raises(SystemExit):
        parser.parse_args(["--http-port", "8080"])
    with pytest.raises(ValueError, match="not ServerConfig flags"):
        config.add_arguments(argparse.ArgumentParser(), ["no_such_field"])


def test_bf16_is_refused_where_it_would_be_slow_or_cannot_run(monkeypatch):
    import landmarks.hardware

    monkeypatch.setattr(landmarks.hardware, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert parse("--backend", "torchscript", "--precision", "bf16").precision == "bf16"
    with pytest.raises(ValueError, match="the onnxruntime backend runs fp32"):
        ServerConfig(backend="onnxruntime", precision="bf16")
    monkeypatch.setattr(landmarks.hardware, "cpu_bf16_flags", list)
    with pytest.raises(ValueError, match="neither AVX-512 BF16 nor AMX"):
        ServerConfig(backend="torchscript", precision="bf16")
    assert ServerConfig(backend="torchscript", precision="bf16", device="cuda").precision == "bf16"  # the GPU's
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        ServerConfig(precision="fp16")


def test_int8_is_for_onnxruntime_on_the_cpu():
    assert ServerConfig(backend="onnxruntime", precision="int8").precision == "int8"
    for refused in (dict(backend="torchscript"), dict(backend="onnxruntime", device="cuda")):
        with pytest.raises(ValueError, match="int8 runs on --backend onnxruntime on the CPU"):
            ServerConfig(precision="int8", **refused)


def test_session_threads_are_for_onnxruntime_sessions_only():
    assert parse("--backend", "onnxruntime", "--session-threads", "2").session_threads == 2
    assert ServerConfig(backend="onnxruntime").session_threads is None  # default: a batch worker's share
    with pytest.raises(ValueError, match="--session-threads must be >= 1, got 0"):
        ServerConfig(backend="onnxruntime", session_threads=0)
    with pytest.raises(ValueError, match="--backend torchscript takes its threads from --threads"):
        ServerConfig(backend="torchscript", session_threads=2)
