"""The admin documentation says what the code does: settings, messages, metric and variable names, links."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from tools import settings_table
from webhook.cli import _JsonYamlLoader
from webhook.config import Config
from webhook.decision import Request, decide
from webhook.settings import USED_BY

EVERY_SETTING = [setting for group, _ in USED_BY for setting in group]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
TEXTS = {path: path.read_text() for path in [README, *DOCS]}
DENIED = 'denied the request: '


def example(name: str) -> dict:
    return yaml.load((ROOT / "examples" / name).read_text(), Loader=_JsonYamlLoader)


def decision(old: dict, new: dict):
    meta = new["metadata"]
    return decide(Request("UPDATE", "harvesterhci.io", "Upgrade", "", meta["namespace"], meta["name"], "admin", (),
                          old, new), Config())


def quoted_after(text: str, marker: str) -> list[str]:
    return [line.split(marker, 1)[1] for line in text.splitlines() if marker in line and "..." not in line]


def test_settings_table_is_generated_from_the_code():
    assert settings_table.current(TEXTS[settings_table.DOC]) == settings_table.render()
    table = settings_table.render()
    for setting in EVERY_SETTING:
        assert f"`{setting.flag}`" in table and f"`{setting.env}`" in table


def test_the_refused_dismissal_in_the_readme_is_what_the_guard_says():
    [shown] = quoted_after(TEXTS[README], DENIED)
    assert shown == decision(example("stored-upgrade.yaml"), example("dashboard-put.yaml")).message


def test_the_dry_run_demonstration_shows_what_the_guard_answers():
    """docs/install.md: the JSON patch that sets the label to upgrade-guard-check and removes /status."""
    stored = example("stored-upgrade.yaml")
    patched = copy.deepcopy(stored)
    patched["metadata"]["labels"]["harvesterhci.io/read-message"] = "upgrade-guard-check"
    del patched["status"]
    result = decision(stored, patched)
    install = TEXTS[ROOT / "docs" / "install.md"]
    assert quoted_after(install, DENIED) == [result.message]
    assert f"Warning: {result.warning}\n" in install


def _test_switches() -> set[str]:
    """Variables the tests read for their own amounts (tests/switches.py), not settings of the guard."""
    pattern = r'(?:amount\(|environ\.get\()"(UPGRADE_GUARD_[A-Z_]+)"'
    return {name for path in (ROOT / "tests").glob("*.py") for name in re.findall(pattern, path.read_text())}


def test_every_documented_variable_is_a_setting():
    known = {s.env for s in EVERY_SETTING} | _test_switches()
    for path, text in TEXTS.items():
        assert set(re.findall(r"UPGRADE_GUARD_[A-Z_]+", text)) <= known, path


def test_every_metric_named_in_the_docs_is_in_the_checked_table():
    """The table in docs/observability.md is checked against a running guard by tests/test_observability.py."""
    table = set(re.findall(r"^\| `(\w+)` \|", TEXTS[ROOT / "docs" / "observability.md"], re.MULTILINE))
    for path, text in TEXTS.items():
        named = set(re.findall(r"\b(upgrade_guard_\w+?)(?:_bucket|_count|_sum)?\b", text))
        assert named <= table, (path, named - table)


def test_links_between_the_documents_resolve():
    for path, text in TEXTS.items():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), (path, target)


def test_the_table_covers_every_group_of_settings():
    import webhook.settings as module
    groups = [value for value in vars(module).values()
              if isinstance(value, tuple) and value and all(isinstance(s, module.Setting) for s in value)]
    assert {s.flag for group in groups for s in group} == {s.flag for s in EVERY_SETTING}
