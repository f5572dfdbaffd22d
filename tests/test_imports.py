"""The packages have no import cycle (module-level imports, TYPE_CHECKING ones included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycle_in_the_packages():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 import cycle(s)" in done.stdout
