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


def test_since_reads_what_was_said_after_the_newest_mark_of_an_event() -> None:
    ring = LogRing("e")
    ring.append("old run: address already in use")
    ring.mark("start: /bin/engine --port 1")
    ring.append("first try")
    ring.mark("stopped -> starting")
    ring.mark("start: /bin/engine --port 2")
    ring.append("second try")
    assert ring.since("start: ", 50) == ["second try"]
    assert ring.since("start: ", 1) == ["second try"]  # only the last n lines are looked at
    assert LogRing("none").since("start: ", 5) == []
    plain = LogRing("p")
    plain.append("no mark at all")
    assert plain.since("start: ", 5) == ["no mark at all"]
