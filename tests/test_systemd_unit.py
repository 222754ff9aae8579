"""The shipped systemd unit: hardened as a distribution packager would, clean for
``systemd-analyze verify``, and with a stop timeout that covers lkn's drain and its engines'
stop grace (``lkn check-config`` prints what a config needs)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lkn.__main__ import KILL_MARGIN_S, stop_timeout_s
from tests.conftest import ROOT, write_config

UNIT = ROOT / "systemd" / "lkn.service"


def service() -> dict[str, list[str]]:
    """The [Service] section; a key set several times keeps every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("key, value", [
    ("ProtectSystem", "strict"), ("ProtectHome", "read-only"), ("PrivateTmp", "true"),
    ("NoNewPrivileges", "true"), ("CapabilityBoundingSet", ""), ("UMask", "0027"),
    ("LogsDirectoryMode", "0750"), ("StateDirectoryMode", "0700"),
    ("ProtectKernelTunables", "true"), ("ProtectKernelModules", "true"),
    ("ProtectControlGroups", "true"), ("RestrictNamespaces", "true"),
    ("RestrictSUIDSGID", "true"), ("DevicePolicy", "closed"),
    ("SystemCallFilter", "@system-service"), ("EnvironmentFile", "-/etc/lkn/secrets.env"),
])
def test_the_unit_is_hardened(key: str, value: str) -> None:
    assert service()[key] == [value]


def test_the_gpu_stays_reachable() -> None:
    allowed = service()["DeviceAllow"]
    assert "char-nvidia-uvm rw" in allowed and "char-drm rw" in allowed
    assert "PrivateDevices" not in service() and "MemoryDenyWriteExecute" not in service()


def test_the_stop_timeout_covers_the_drain_and_sglangs_grace(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
models = {
  { name = "sg", engine = "sglang", model_file = "/models/hf", ctx_size = 4096 },
  { name = "l", model_file = "/x.gguf", ctx_size = 2048 },
}""")
    needed = stop_timeout_s(cfg)
    assert needed == 30 + 30 + KILL_MARGIN_S  # drain, SGLang's own grace, the kill
    assert float(service()["TimeoutStopSec"][0]) >= needed
    out = subprocess.run([sys.executable, "-m", "lkn", "check-config", cfg.path],
                         capture_output=True, text=True, check=True).stdout
    assert f"systemd TimeoutStopSec >= {needed:.0f}" in out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = tmp_path / "lkn.service"
    unit.write_text(UNIT.read_text().replace("/opt/lkn", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
