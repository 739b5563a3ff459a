"""The benchmarks' webhook sink (benchmarks/e2e.py ``--sink-records``) stops cleanly when
told to, with its controller's connection still open: no error logged on its way out (a
control handler left reading would be cancelled, and asyncio would log it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_sink_quits_with_its_control_connection_open(tmp_path: Path) -> None:
    sink = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "e2e.py"), "--sink-records", str(tmp_path / "r.tsv")],
        cwd=BENCHMARKS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        ports = json.loads(sink.stdout.readline())
        with socket.create_connection(("127.0.0.1", ports["control"]), timeout=10) as control:
            reader = control.makefile("rb")
            control.sendall(b"stats\n")
            assert json.loads(reader.readline()) == {"received": 0, "distinct": 0}
            control.sendall(b"quit\n")
            assert json.loads(reader.readline()) == {"received": 0, "distinct": 0}
            # The connection stays open while the sink stops.
            _, errors = sink.communicate(timeout=20)
        assert sink.returncode == 0
        assert "Exception in callback" not in errors, errors
        assert "Traceback" not in errors, errors
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
