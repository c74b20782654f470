"""System packages some tests need that pip cannot install.

- ``bubblewrap`` (``bwrap``): the code sandbox (``tests/test_sandbox*.py``, the code example);
- ``chromium``: rendering the signal-analysis report, the first-hour screenshots and the chat page.

``make test`` runs ``python tests/system_packages.py --install`` first, which installs the missing ones
with apt-get where it can (as root, or with passwordless sudo). Where it cannot, the tests that need them
are skipped and pytest ends with one line naming the packages and the command that installs them.
``SDPO_REQUIRE_SYSTEM_PACKAGES=1`` (set by ``.ci/run``) turns those skips into failures;
``SDPO_REQUIRE_BROWSER=1``, its older spelling, does so for chromium only.

A test declares what it needs with ``@pytest.mark.system_package("bubblewrap")`` (checked before its
fixtures run) or calls :func:`require` in its body.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest

REQUIRE_ENV = "SDPO_REQUIRE_SYSTEM_PACKAGES"
INSTALL_ENV = "SDPO_INSTALL_SYSTEM_PACKAGES"  # 0: make test never installs anything


@dataclass(frozen=True)
class Package:
    commands: tuple[str, ...]  # any of these on PATH means installed
    why: str
    apt: tuple[str, ...]  # Debian packages to install


PACKAGES = {
    "bubblewrap": Package(("bwrap",), "the code sandbox", ("bubblewrap",)),
    "chromium": Package(("chromium", "chromium-browser"), "rendering reports in a headless browser",
                        ("chromium", "fonts-dejavu-core")),
}

skipped: Counter = Counter()  # package -> tests skipped for want of it, this session


def find(name: str) -> str | None:
    """Path of the package's program, or None."""
    for command in PACKAGES[name].commands:
        path = shutil.which(command)
        if path:
            return path
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def required(name: str) -> bool:
    """Whether a missing ``name`` fails the tests that need it instead of skipping them."""
    return _truthy(os.environ.get(REQUIRE_ENV)) or (name == "chromium" and bool(os.environ.get("SDPO_REQUIRE_BROWSER")))


def install_command(names) -> str:
    apt = [p for name in names for p in PACKAGES[name].apt]
    return f"sudo apt-get install -y --no-install-recommends {' '.join(apt)}"


def require(name: str) -> str:
    """The program of system package ``name``; skips the calling test without it (fails it when required)."""
    path = find(name)
    if path is not None:
        return path
    message = f"needs {name} ({PACKAGES[name].why}): {install_command([name])}"
    if required(name):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set)", pytrace=False)
    skipped[name] += 1
    pytest.skip(message)


def summary_line() -> str | None:
    """One line for the end of the test run, naming what was skipped and how to install it."""
    if not skipped:
        return None
    counts = ", ".join(f"{name} ({n} test{'s' if n != 1 else ''})" for name, n in sorted(skipped.items()))
    return (f"skipped for missing system packages: {counts}; install with `{install_command(sorted(skipped))}` "
            f"(make test does it as root or with passwordless sudo); {REQUIRE_ENV}=1 makes these failures")


def install_missing() -> int:
    """Install the missing packages with apt-get where possible (root or passwordless sudo); say what happened."""
    missing = [name for name in PACKAGES if find(name) is None]
    if not missing:
        return 0
    if os.environ.get(INSTALL_ENV, "1").strip() == "0":
        print(f"== not installing {', '.join(missing)} ({INSTALL_ENV}=0): the tests that need them are skipped")
        return 0
    if shutil.which("apt-get") is None:
        print(f"== {', '.join(missing)} missing and no apt-get here: the tests that need them are skipped "
              "(install them with your package manager)")
        return 0
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None or subprocess.run([sudo, "-n", "true"], capture_output=True).returncode != 0:
            print(f"== {', '.join(missing)} missing and no root or passwordless sudo: the tests that need them are "
                  f"skipped (install: {install_command(missing)})")
            return 0
        prefix = [sudo, "-n"]
    apt = [p for name in missing for p in PACKAGES[name].apt]
    print(f"== installing {' '.join(apt)} (Debian) for the tests that need {', '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = subprocess.run([*prefix, "apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
    done = subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *apt],
                          capture_output=True, text=True, env=env)
    if update.returncode != 0 or done.returncode != 0:
        tail = (done.stderr or update.stderr).strip().splitlines()[-1:] or ["?"]
        print(f"== apt-get could not install them ({tail[0]}): the tests that need them are skipped")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        sys.exit(install_missing())
    for name in PACKAGES:
        print(f"{name}: {find(name) or 'missing'}")
