"""`vitals demo` shows live figures, /metrics answers while it runs, Ctrl-C leaves no process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streams.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = (int(fields[1]), fields[0])
    return out


def _descendants(root: int) -> set[int]:
    procs = _processes()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {pid for pid in pids if pid in procs and procs[pid][1] != "Z"}


def test_demo_shows_live_figures_and_ctrl_c_leaves_no_process(tmp_path):
    web_port = free_port()
    env = {**os.environ, "VITALS_APP__WEB_PORT": str(web_port),
           "VITALS_APP__EMBEDDED_PORT": str(free_port()), "VITALS_APP__ID": "vitals-demo-test"}
    out = open(tmp_path / "demo.out", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--customers", "40",
                             "--days", "20"], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        metrics = b""
        while time.monotonic() < deadline:
            assert demo.poll() is None, (tmp_path / "demo.out").read_text()
            text = (tmp_path / "demo.out").read_text(errors="replace")
            if text.count("customer-vitals demo") >= 2 and "smb" in text:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics") as resp:
                    metrics = resp.read()
                break
            time.sleep(0.5)
        assert b'vitals_events_total{family="usage",outcome="accepted"}' in metrics
        assert "events/s" in text and "watermark" in text and "dead letters" in text
        children = _descendants(demo.pid)
        assert len(children) >= 2, children  # the worker and the embedded broker
        started = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert demo.wait(60) in (0, 130)
        deadline = time.monotonic() + 20
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(children), "processes left behind"
        assert time.monotonic() - started < 30
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        out.close()
