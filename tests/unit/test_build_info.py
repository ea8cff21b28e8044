"""`vitals --version` and the vitals_build_info gauge name the same version and commit."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams import cli
from streams.exporters import metrics as m

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_build_info():
    m.build_info.cache_clear()
    yield
    m.build_info.cache_clear()


def samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_version_prints_package_version_and_commit_from_the_environment(
        fresh_build_info, monkeypatch, capsys):
    monkeypatch.setenv("VITALS_COMMIT", "0123abcd")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    version = metadata.version("customer-vitals")
    assert capsys.readouterr().out == f"vitals {version} (commit 0123abcd)\n"


def test_build_info_gauge_is_one_with_version_and_commit(fresh_build_info, monkeypatch):
    monkeypatch.setenv("VITALS_COMMIT", "feedbeef")
    text = m.Metrics().exposition().decode()
    (sample,) = samples(text, "vitals_build_info")
    assert sample.value == 1.0
    assert sample.labels == {"version": metadata.version("customer-vitals"),
                             "commit": "feedbeef"}


def test_commit_from_git_when_no_environment_variable(fresh_build_info, monkeypatch):
    monkeypatch.delenv("VITALS_COMMIT", raising=False)
    _, commit = m.build_info()
    if not (ROOT / ".git").exists():
        assert commit == m.UNKNOWN
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert len(commit) == 12 and head.startswith(commit)


def test_process_and_platform_metrics_are_exposed():
    text = m.Metrics().exposition().decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        assert samples(text, name) and samples(text, name)[0].value > 0, name
    (info,) = samples(text, "python_info")
    assert info.labels["major"] == str(sys.version_info.major)


def test_version_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={"VITALS_COMMIT": "c0ffee", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.startswith("vitals ") and \
        out.stdout.endswith("(commit c0ffee)\n"), out
