"""README's "Testing your graphs" example is the user project's suite, which CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_testing_example_is_the_user_projects_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing your graphs\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    suite = ROOT / "examples" / "user_project" / "tests" / "test_price_alerts.py"
    assert block == suite.read_text()


def test_readme_names_every_plugin_fixture() -> None:
    plugin = (ROOT / "headrace" / "testing" / "plugin.py").read_text()
    fixtures = re.findall(r"@pytest\.fixture(?:\([^)]*\))?\ndef (\w+)\(", plugin)
    section = (ROOT / "README.md").read_text().split("## Testing your graphs\n", 1)[1]
    assert set(fixtures) >= {"headrace_registry", "kafka_bootstrap", "kafka_topic"}
    missing = [name for name in fixtures if f"`{name}`" not in section and name != "kafka_broker"]
    assert missing == []
