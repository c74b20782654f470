"""Tests that need a system package are skipped without it and named in one line at the end, or fail where
SDPO_REQUIRE_SYSTEM_PACKAGES=1 (issue 26 item 1). Checked with a PATH that holds neither bwrap nor chromium."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one small test that needs bubblewrap (its mark is checked before it runs, so it runs in a moment)
SANDBOX_TEST = "tests/test_sandbox.py::test_correct_code_scores_one"


def _pytest(tmp_path, **env):
    bare = tmp_path / "bin"  # a PATH without bwrap and chromium
    bare.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("SDPO_REQUIRE_SYSTEM_PACKAGES", "SDPO_REQUIRE_BROWSER",
                                                                 "SDPO_BWRAP", "PYTEST_ADDOPTS")}
    environ.update(PATH=str(bare), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SANDBOX_TEST],
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300)


def test_missing_bubblewrap_skips_and_names_the_package(tmp_path):
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 skipped" in done.stdout
    last = [line for line in done.stdout.splitlines() if line.startswith("skipped for missing system packages")]
    assert len(last) == 1, done.stdout[-3000:]
    assert "bubblewrap (1 test)" in last[0] and "apt-get install -y --no-install-recommends bubblewrap" in last[0]
    assert "SDPO_REQUIRE_SYSTEM_PACKAGES=1" in last[0]


def test_required_system_packages_fail_instead(tmp_path):
    done = _pytest(tmp_path, SDPO_REQUIRE_SYSTEM_PACKAGES="1")
    assert done.returncode != 0
    assert "needs bubblewrap" in done.stdout and "SDPO_REQUIRE_SYSTEM_PACKAGES is set" in done.stdout
    assert "skipped for missing system packages" not in done.stdout


def test_summary_line_and_install_command():
    from tests import system_packages as sp

    saved = sp.skipped.copy()
    try:
        sp.skipped.clear()
        assert sp.summary_line() is None
        sp.skipped.update({"chromium": 3, "bubblewrap": 36})
        line = sp.summary_line()
        assert "bubblewrap (36 tests), chromium (3 tests)" in line
        assert "apt-get install -y --no-install-recommends bubblewrap chromium fonts-dejavu-core" in line
    finally:
        sp.skipped.clear()
        sp.skipped.update(saved)


def test_installer_does_nothing_without_permission(monkeypatch, capsys):
    from tests import system_packages as sp

    monkeypatch.setattr(sp, "find", lambda name: None)
    monkeypatch.setenv("SDPO_INSTALL_SYSTEM_PACKAGES", "0")
    assert sp.install_missing() == 0
    assert "not installing bubblewrap, chromium" in capsys.readouterr().out
