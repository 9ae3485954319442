"""`landmarks calibrate`: ranges from the category's images, int8 checked against fp32 on held-out rows,
written into the adapter's metadata only when accepted (tensors and fingerprint unchanged)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from landmarks.adapter_io import load_adapter, load_core, save_adapter
from landmarks.cli import main
from landmarks.int8 import CALIBRATION_KEY, Int8Calibration
from landmarks.projection import adapter_state_dict, build_adapted
from tests.factories import randomize_adapter


@pytest.fixture
def adapter_file(tmp_path, core_file):
    core = load_core(core_file)
    adapted = build_adapted(core.build(), 3)
    randomize_adapter(adapted, seed=1)
    return save_adapter(tmp_path / "faces.safetensors", adapter_state_dict(adapted), adapted.config,
                        category="faces", core_sha256=core.sha256)


def test_calibrate_writes_an_accepted_calibration(adapter_file, core_file, face_data, tmp_path, capsys):
    out = tmp_path / "faces-int8.safetensors"
    images = ["--images", f"mtfl:{face_data / 'train.txt'}", "--split", ":6", "--held-out", "6:"]
    # every convolution of the tiny core's hourglass kept in fp32 but the first block's: the check
    # must pass, whatever these random weights do in int8
    keep = "stem,block2,block3,hourglass,top,top_conv,head"
    rc = main(["calibrate", str(adapter_file), *images, "--core", str(core_file), "--keep-fp32", keep, "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "accepted" in printed and "held-out images, px at 128: mean" in printed
    core = load_core(core_file)
    before, after = load_adapter(adapter_file, core), load_adapter(out, core)
    assert after.sha256 == before.sha256 and CALIBRATION_KEY not in before.metadata
    calibration = Int8Calibration.from_metadata(after.metadata)
    assert calibration.quantised and calibration.check["images"] == 4 and calibration.check["p95_px"] <= 0.5
    # `landmarks info` says it in words (the ranges are for the server)
    assert main(["info", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "int8_calibration" in x)
    assert f"{len(calibration.quantised)} of 36 convolutions in int8" in line and "held-out images" in line


def test_calibrate_refuses_and_writes_nothing_when_int8_moves_the_points(adapter_file, core_file, face_data,
                                                                         monkeypatch, capsys):
    import training.calibrate

    monkeypatch.setattr(training.calibrate, "MAX_POINT_ERROR_PX", -1.0)  # nothing can pass
    before = adapter_file.read_bytes()
    rc = main(["calibrate", str(adapter_file), "--images", f"mtfl:{face_data / 'train.txt'}", "--core", str(core_file),
               "--check-images", "4"])
    captured = capsys.readouterr()
    assert rc == 1 and "refused: nothing written" in captured.err and "--keep-fp32" in captured.err
    assert adapter_file.read_bytes() == before


def test_a_refusal_at_the_end_of_training_is_recorded_for_the_server(adapter_file, core_file, face_data,
                                                                      monkeypatch):
    """Where training ends with a calibration (`landmarks adapt`, server jobs), a refused check is kept in
    the adapter's metadata so the server's precision_reason can name it; a later accepted calibration
    drops it."""
    import training.calibrate
    from landmarks.int8 import REFUSED_KEY, checked_int8
    from training.calibrate import calibrate

    images, core = f"mtfl:{face_data / 'train.txt'}", load_core(core_file)
    monkeypatch.setattr(training.calibrate, "MAX_POINT_ERROR_PX", -1.0)  # nothing can pass
    result = calibrate(adapter_file, images, ":6", "6:", None, core_file, record_refusal=True)
    assert not result["accepted"] and result["refusal_recorded"] == str(adapter_file)
    adapter = load_adapter(adapter_file, core)
    assert CALIBRATION_KEY not in adapter.metadata
    passed, why = checked_int8(adapter.metadata)
    assert not passed and why.startswith("its int8 calibration was refused by its check (mean ")
    assert f"p95 {result['p95_px']:.3f} px" in why and "--keep-fp32" in why
    monkeypatch.undo()
    keep = ("stem", "block2", "block3", "hourglass", "top", "top_conv", "head")  # passes whatever the weights
    assert calibrate(adapter_file, images, ":6", "6:", None, core_file, keep, record_refusal=True)["accepted"]
    adapter = load_adapter(adapter_file, core)
    assert REFUSED_KEY not in adapter.metadata and checked_int8(adapter.metadata)[0]


@pytest.mark.parametrize("recorded", ["", "not json", "[1, 2]", '{"mean_px": "NaN", "p95_px": 1}', '{"p95_px": 1}',
                                      "[" * 100_000])
def test_an_unreadable_recorded_refusal_only_loses_its_explanation(recorded):
    from landmarks.int8 import REFUSED_KEY, checked_int8

    assert checked_int8({REFUSED_KEY: recorded}) == (False, "no int8 calibration (landmarks calibrate adds one)")


def test_calibrate_explains_bad_arguments(adapter_file, core_file, face_data, capsys):
    images = ["--images", f"mtfl:{face_data / 'train.txt'}", "--core", str(core_file)]
    assert main(["calibrate", str(adapter_file), *images, "--split", ":6"]) == 2
    assert "both --split and --held-out" in capsys.readouterr().err
    assert main(["calibrate", str(adapter_file), *images, "--split", ":6", "--held-out", "4:"]) == 2
    assert "--split :6 and --held-out 4: share 2 rows (rows 4 to 5 of" in capsys.readouterr().err
    assert main(["calibrate", str(adapter_file), *images, "--keep-fp32", "nosuchlayer"]) == 2
    assert "no convolution inside nosuchlayer" in capsys.readouterr().err


def test_evaluate_scores_the_adapter_as_served(adapter_file, core_file, face_data, tmp_path):
    """`landmarks evaluate --precision fp32|int8`: the protocol on the server's backend (ONNX Runtime,
    8-bit pixels); fp32 there gives PyTorch's numbers to the pixels' rounding, int8 needs a calibration."""
    from training.evaluate import evaluate

    data = (f"mtfl:{face_data / 'train.txt'}", f"mtfl:{face_data / 'test.txt'}", None, None)
    torch_fp32 = evaluate(adapter_file, *data, core_path=core_file, consistency_images=4)
    served = evaluate(adapter_file, *data, core_path=core_file, consistency_images=4, precision="fp32")
    assert served["precision"] == "fp32 (onnxruntime, as served)"
    assert served["forward"] == pytest.approx(torch_fp32["forward"], abs=0.5)  # % IOD; random tiny weights
    with pytest.raises(ValueError, match="no int8 calibration"):
        evaluate(adapter_file, *data, core_path=core_file, consistency_images=4, precision="int8")
    out = tmp_path / "int8.safetensors"
    keep = "stem,block2,block3,hourglass,top,top_conv,head"
    assert main(["calibrate", str(adapter_file), "--images", f"mtfl:{face_data / 'train.txt'}", "--split", ":6",
                 "--held-out", "6:", "--core", str(core_file), "--keep-fp32", keep, "--out", str(out)]) == 0
    int8 = evaluate(out, *data, core_path=core_file, consistency_images=4, precision="int8")
    assert int8["precision"].startswith("int8") and abs(int8["forward"] - served["forward"]) < 5


def test_adapt_ends_by_calibrating_on_rows_it_held_out(core_file, face_data, tmp_path, capsys):
    """`landmarks adapt` calibrates its result for int8 on the rows after --train-split, which it never
    trained on; `--no-calibrate` skips that."""
    common = ["adapt", f"mtfl:{face_data / 'train.txt'}", "--preset", "smoke", "--core", str(core_file),
              "--num-landmarks", "3", "--category", "faces", "--train-split", ":6"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    verdict = next(line for line in printed.splitlines() if "int8 vs fp32 on 4 held-out images" in line)
    core = load_core(core_file)
    adapter = load_adapter(tmp_path / "a" / "adapter.safetensors", core)
    calibration = Int8Calibration.from_metadata(adapter.metadata)
    if verdict.startswith("calibrated for int8"):
        assert calibration is not None and calibration.check["images"] == 4
    else:
        assert verdict.startswith("int8 calibration refused") and calibration is None
    assert main([*common, "--out", str(tmp_path / "b"), "--no-calibrate"]) == 0
    assert "int8" not in capsys.readouterr().out
    assert CALIBRATION_KEY not in load_adapter(tmp_path / "b" / "adapter.safetensors", core).metadata


def test_adapt_holds_out_the_last_rows_for_the_check(tmp_path):
    from training.adapt import held_out_rows

    folder = tmp_path / "photos"
    folder.mkdir()
    from PIL import Image

    for i in range(50):
        Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i:02d}.png")
    assert held_out_rows(f"folder:{folder}", "") == (":-5", "-5:")  # a tenth, at most 300
    assert held_out_rows(f"folder:{folder}", ":40") == (":40", "40:")
    assert held_out_rows(f"folder:{folder}", ":-8") == (":-8", "-8:")
    assert held_out_rows(f"folder:{folder}", "10:20") is None  # nothing simple to check on: says so, no guess
