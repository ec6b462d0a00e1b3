"""README's example is the front door: it must run and print what README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs_and_alerts(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=README.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "[('signal', {'alert': {'alert': {'mid': 110.0, 'deviation': 0.1}}})]" in result.stdout


def test_readme_testing_example_is_the_user_projects_tested_suite() -> None:
    """The toolkit example in README is, verbatim, the suite that CI runs against the
    installed wheel (tests/integration/test_user_project.py), so it cannot go stale."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    suite = README.parent / "examples" / "user_project" / "tests" / "test_price_alerts.py"
    assert suite.read_text() in blocks, "README's 'Testing your graphs' example drifted"
