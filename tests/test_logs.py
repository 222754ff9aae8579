"""The engine log ring and its file: rotation, and a file that cannot be written."""
from __future__ import annotations

from pathlib import Path

from lkn.engines.logs import LogRing


def test_engine_logs_rotate_past_their_size_and_keep_a_few(tmp_path: Path) -> None:
    ring = LogRing("m@512", log_dir=str(tmp_path), max_bytes=1000, keep=2)
    for i in range(200):
        ring.append(f"line {i:04d} " + "x" * 40)
    ring.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["m@512.log", "m@512.log.1", "m@512.log.2"]
    assert all(p.stat().st_size < 1100 for p in tmp_path.iterdir())
    assert "line 0199" in (tmp_path / "m@512.log").read_text()  # the newest is in the live file
    assert "line 0000" not in "".join(p.read_text() for p in tmp_path.iterdir())  # oldest gone
    assert ring.tail(1).startswith("line 0199")


def test_without_a_cap_the_file_just_grows(tmp_path: Path) -> None:
    ring = LogRing("m@512", log_dir=str(tmp_path))
    for i in range(100):
        ring.append(f"line {i} " + "x" * 40)
    ring.close()
    assert [p.name for p in tmp_path.iterdir()] == ["m@512.log"]


def test_a_file_that_cannot_be_written_leaves_the_ring_working(tmp_path: Path) -> None:
    ring = LogRing("m@512")
    ring.path = "/dev/full"
    ring.append("a")
    ring.append("b")
    assert ring.tail(2) == "a\nb"
