"""What the README promises about running the tests holds."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_slow_selection_runs_tests():
    """`python3 -m pytest -m slow` (README) collected nothing and exited 5."""
    assert "python3 -m pytest -m slow" in (ROOT / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "slow", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    selected = re.search(r"(\d+)/\d+ tests collected", proc.stdout)
    assert selected and int(selected.group(1)) >= 2, proc.stdout[-500:]
