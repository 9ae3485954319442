"""The server caps glibc's malloc arenas (serving.memory), unless MALLOC_ARENA_MAX says otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from serving.memory import cap_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the cap is glibc's mallopt")


@glibc
def test_the_cap_is_set_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", "from serving.memory import cap_malloc_arenas as c; print(c(2))"],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"


def test_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False
