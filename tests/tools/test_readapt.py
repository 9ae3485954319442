"""scripts/readapt.sh --dry-run: the commands it would run parse, and each category's stages add up to
the shipped file's lineage, which the script exists to repeat on another core."""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys

from landmarks.adapter_io import read_artifact
from landmarks.cli import build_parser
from tests.tools.test_soak import ROOT


def test_each_category_repeats_its_shipped_lineage_with_commands_that_parse():
    result = subprocess.run(["bash", str(ROOT / "scripts/readapt.sh"), "--dry-run", "faces", "cats", "shoes"],
                            check=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LANDMARKS": "landmarks", "PYTHON": sys.executable,
                                 "CORE": "new-core.safetensors", "NAME": "test"})
    commands = [shlex.split(line[2:])[1:] for line in result.stdout.splitlines() if line.startswith("+ landmarks ")]
    for argv in commands:
        args, unknown = build_parser(argv[0]).parse_known_args(argv)
        assert not unknown and not getattr(args, "_unavailable", None), argv
    adapts = [vars(build_parser("adapt").parse_args(argv)) | {"argv": argv} for argv in commands if argv[0] == "adapt"]
    for category in ("faces", "cats", "shoes"):
        stages = [a for a in adapts if a["category"] == category]
        shipped = int(read_artifact(ROOT / f"adapters/{category}.safetensors").metadata["training_steps_in_all"].split()[0])
        assert sum(int(a["argv"][a["argv"].index("--steps") + 1]) for a in stages) == shipped
        assert all("--core" in a["argv"] and "new-core.safetensors" in a["argv"] for a in stages)
        assert stages[0]["argv"].count("--warm-start") == 0  # the first stage starts from nothing
        for before, after in itertools.pairwise(stages):
            start = after["argv"][after["argv"].index("--warm-start") + 1]
            assert start.startswith(before["argv"][before["argv"].index("--out") + 1] + "/")
        # served in int8 as the shipped files are: the last stage is calibrated, off the validation rows' test half
        last = stages[-1]["argv"][stages[-1]["argv"].index("--out") + 1] + "/adapter.safetensors"
        calibrations = [argv for argv in commands if argv[0] == "calibrate" and last in argv]
        assert len(calibrations) == 1 and "new-core.safetensors" in calibrations[0]
