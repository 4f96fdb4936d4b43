"""The project's promises about itself: Quickstart and CI in step, the demo, the public API."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import aerostic_webhooks

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aerostic_webhooks"
OPTIONAL = {"flask", "django", "starlette", "fastapi", "redis", "uvicorn", "werkzeug", "gunicorn"}
ADAPTERS = {"flask.py", "starlette.py", "fastapi.py", "cli.py", "testing.py", "redis.py"}


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, flags=re.DOTALL)


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert "aerostic-webhooks demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"


def test_the_demo_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aerostic_webhooks", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout
    assert "+919876543210" not in result.stderr  # the demo's log lines carry no phone number


def test_public_api_is_exactly_the_designed_names() -> None:
    assert set(aerostic_webhooks.__all__) == {
        "WebhookReceiver",
        "Receipt",
        "sign",
        "verify_signature",
        "parse_event",
        "Event",
        "MessageReceived",
        "MessageSent",
        "MessageDelivered",
        "MessageRead",
        "MessageFailed",
        "ContactCreated",
        "UnknownEvent",
        "WebhookError",
        "InvalidSignature",
        "InvalidPayload",
        "PayloadTooLarge",
        "StoreUnavailable",
        "ProcessingFailed",
        "MemoryStore",
        "SQLiteStore",
    }
    for name in aerostic_webhooks.__all__:
        assert hasattr(aerostic_webhooks, name)


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


def test_core_imports_no_framework_or_optional_dependency_at_module_level() -> None:
    modules = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.name in {*ADAPTERS, "__main__.py"} or relative.parts[0] == "django":
            continue
        parts = ["aerostic_webhooks", *relative.with_suffix("").parts]
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    # Imported in a fresh interpreter: an import under ``try`` or ``if`` counts too.
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(modules)!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(OPTIONAL)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert len(modules) > 10
    assert result.stdout.strip() == "[]", f"the core imported {result.stdout.strip()}"


def lower_bounds() -> dict[str, str]:
    """What pyproject.toml states: each ``name>=version`` among the dependencies and extras."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("dependencies = [", 1)[1].split("\n[project.scripts]", 1)[0]
    bounds: dict[str, str] = {}
    for name, version in re.findall(r'"([a-z]+)(?:\[[a-z]+\])?>=([0-9.]+)', section):
        assert bounds.setdefault(name, version) == version, f"two lower bounds for {name}"
    return bounds


def noxfile_value(name: str) -> object:
    """A module-level constant of noxfile.py (read, not imported: nox may not be installed)."""
    noxfile = ast.parse((ROOT / "noxfile.py").read_text())
    return next(
        ast.literal_eval(node.value)
        for node in noxfile.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == name for target in node.targets)
    )


def test_the_version_matrix_pins_exactly_the_stated_lower_bounds() -> None:
    bounds = lower_bounds()
    lowest = noxfile_value("LOWEST")
    assert isinstance(lowest, dict)
    assert lowest == {name: bounds[name] for name in lowest}
    assert {"pydantic", "flask", "django", "starlette", "fastapi", "redis"} <= lowest.keys()
    tox = (ROOT / "tox.ini").read_text()
    pins = re.findall(r"^\s+(?:deps = )?([a-z]+)==([0-9.]+)$", tox, flags=re.MULTILINE)
    assert {name for name, _ in pins} >= lowest.keys()
    for name, version in pins:
        assert lowest.get(name, version) == version, f"tox.ini pins {name}=={version}"


def test_the_version_matrix_runs_every_python_pyproject_states() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    oldest = re.search(r'requires-python = ">=(3\.[0-9]+)"', pyproject)
    assert oldest is not None
    listed = re.findall(r'"Programming Language :: Python :: (3\.[0-9]+)"', pyproject)
    assert listed and listed[0] == oldest.group(1), "the classifiers start at requires-python"
    entries = {f"python{version.replace('.', '')}": version for version in listed}
    # noxfile.py: an entry per Python, no other, and `oldest` on the oldest.
    matrix = noxfile_value("MATRIX_PYTHONS")
    assert matrix == entries
    assert noxfile_value("OLDEST_PYTHON") == oldest.group(1)
    noxfile = ast.parse((ROOT / "noxfile.py").read_text())
    (session,) = [n for n in noxfile.body if isinstance(n, ast.FunctionDef) and n.name == "oldest"]
    keywords = [k for d in session.decorator_list if isinstance(d, ast.Call) for k in d.keywords]
    assert [(k.arg, ast.unparse(k.value)) for k in keywords] == [("python", "OLDEST_PYTHON")]
    # tox.ini: the same environments, each section on its own Python.
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    pythons = {
        section.removeprefix("testenv:"): tox[section].get("base_python")
        for section in tox.sections()
        if re.fullmatch(r"testenv:python[0-9]+", section)
    }
    assert pythons == {entry: f"python{version}" for entry, version in entries.items()}
    assert tox["testenv:oldest"]["base_python"] == f"python{oldest.group(1)}"
    # .ci/run: nox runs `oldest` and the newest Python's entry (not in a comment).
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "bin/nox " in line and not line.lstrip().startswith("#")
    ]
    newest = max(entries, key=lambda entry: tuple(map(int, entries[entry].split("."))))
    assert len(commands) == 1 and f'-s oldest "matrix({newest})"' in commands[0], commands
