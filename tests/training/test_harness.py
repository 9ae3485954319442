"""The loop both commands share: --max-minutes and --resume, the config record, the licence, --help."""

from __future__ import annotations

import json

import torch

from landmarks.adapter_io import load_adapter, load_core
from training.adapt import PRESETS, UNKNOWN_LICENSE, AdaptConfig, adapt


def _cfg(tmp_path, core_file, images, **over):
    return AdaptConfig(**{**PRESETS["smoke"], "images": images, "core": str(core_file), "category": "faces",
                          "out": str(tmp_path / "run"), "num_landmarks": 4, "device": "cpu", **over})


def _history(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]


def test_max_minutes_stops_exports_and_resume_finishes(tmp_path, core_file, face_data):
    mtfl = f"mtfl:{face_data / 'train.txt'}"
    path = adapt(_cfg(tmp_path, core_file, mtfl, steps=4, max_minutes=1e-6), command="first")
    adapter = load_adapter(path, load_core(core_file))
    assert adapter.metadata["training_steps"] == "1"  # stopped after its first step, file written
    assert (tmp_path / "run" / "samples.png").is_file()  # validated at the stop
    adapt(_cfg(tmp_path, core_file, mtfl, steps=4), resume=True, command="second")
    assert [h["step"] for h in _history(tmp_path)] == [1, 2, 3, 4]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [c["command"] for c in config["commands"]] == ["first", "second"]
    assert [c["from_step"] for c in config["commands"]] == [0, 1]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and {"detector", "generator", "opt_det", "opt_gen"} <= set(ckpt)


def test_the_licence_comes_from_the_option_or_the_reader(tmp_path, core_file, face_data):
    core = load_core(core_file)
    folder = f"folder:{face_data / 'img'}"
    meta = load_adapter(adapt(_cfg(tmp_path, core_file, folder, steps=1), command="t"), core).metadata
    assert meta["license"] == UNKNOWN_LICENSE  # a plain folder, even one named like a known set
    given = adapt(_cfg(tmp_path, core_file, folder, steps=1, license="CC BY-NC 4.0 (test)"), command="t")
    assert load_adapter(given, core).metadata["license"] == "CC BY-NC 4.0 (test)"
    mtfl = adapt(_cfg(tmp_path, core_file, f"mtfl:{face_data / 'train.txt'}", steps=1), command="t")
    assert "MTFL" in load_adapter(mtfl, core).metadata["license"]
    assert load_adapter(mtfl, core).metadata["device"] == "cpu"


def test_help_teaches_device_precision_and_licence():
    from landmarks.cli import build_parser

    def help_of(command):
        return build_parser(command)._subparsers._group_actions[0].choices[command].format_help()

    for command in ("adapt", "train-core"):
        for flag in ("--device", "--bf16", "--license", "torchrun"):
            assert flag in help_of(command), (command, flag)
    for command in ("evaluate", "evaluate-core"):
        assert "--device" in help_of(command)
    args = build_parser("adapt").parse_args(["adapt", "folder:x", "--device", "cuda:1", "--bf16", "false",
                                             "--license", "mine"])
    assert (args.device, args.bf16, args.license) == ("cuda:1", "false", "mine")
