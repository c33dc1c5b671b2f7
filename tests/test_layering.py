"""The layering (docs/architecture.md): ``unimatch/`` is the core and knows no task; each package
under ``tasks/`` is one task's adapter and imports no other task; ``unimatch/task.py``, the
contract, sits below the commands and the training loop that drive it. Checked on the source with
``ast`` (imports) and a word search (comments and strings too), so no code has to run."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "unimatch"
TASKS = sorted(p.parent.name for p in (ROOT / "tasks").glob("*/__init__.py"))
# the modules that drive a Task (or are driven by those): unimatch/task.py must import none of them
ABOVE_THE_CONTRACT = {"unimatch.cli", "unimatch.engine", "unimatch.method", "unimatch.run_folder"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (relative imports resolved; ``from a import b`` counts as
    ``a`` and ``a.b``); with ``top_level_only``, the imports that run when the module is imported."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    if top_level_only:   # the top-level statements, try/if blocks included
        nodes = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(stmt)]
    else:
        nodes = ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tasks_are_found():
    assert {"natural", "change_detection", "acdc"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_no_task_imports_another(task):
    wrong = {(path.relative_to(ROOT).as_posix(), module)
             for path in python_files(ROOT / "tasks" / task)
             for module in imported_modules(path)
             if module.startswith("tasks.") and module.split(".")[1] != task}
    assert not wrong, f"tasks/{task} imports another task: {sorted(wrong)}"


def test_the_core_imports_no_task():
    wrong = {(path.relative_to(ROOT).as_posix(), module) for path in python_files(CORE)
             for module in imported_modules(path) if module == "tasks" or module.startswith("tasks.")}
    assert not wrong, f"unimatch/ imports from tasks/: {sorted(wrong)}"


def task_words() -> re.Pattern:
    """A task's package name as a word, with ``_`` read as any separator (change detection,
    change-detection), and the module path of any task (``tasks.<name>``)."""
    names = [re.escape(name).replace("_", r"[ _-]?") for name in TASKS]
    return re.compile(rf"\b({'|'.join(names)})\b|\btasks\.[A-Za-z_{{]", re.IGNORECASE)


def test_the_core_names_no_task():
    """Neither in code nor in comments: the core says "a demo", "bi-temporal pairs", "3-D volumes"."""
    words = task_words()
    hits = [f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}"
            for path in python_files(CORE) for number, line in enumerate(path.read_text().splitlines(), 1)
            if words.search(line)]
    assert not hits, "unimatch/ names a task:\n" + "\n".join(hits)


def test_the_contract_sits_below_what_drives_it():
    """What ``import unimatch.task`` loads, followed through the core's own modules."""
    seen, todo = set(), ["unimatch.task"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if path.is_file():
            todo.extend(m for m in imported_modules(path, top_level_only=True) if m.startswith("unimatch."))
    assert not seen & ABOVE_THE_CONTRACT, f"unimatch/task.py loads {sorted(seen & ABOVE_THE_CONTRACT)}"
    assert "unimatch.inference" in seen   # the walk followed the imports


def test_a_task_spells_its_own_commands_and_another_tasks():
    """The core's parsers and messages take the command from the task (Task.command): the module
    path of its package, and of a sibling package for a checkpoint or run folder of another task."""
    from tasks.acdc.common import TASK as ACDC
    from tasks.change_detection.common import TASK as CHANGE
    from tasks.natural.common import TASK as NATURAL

    assert [task.command("evaluate") for task in (NATURAL, CHANGE, ACDC)] == [
        "python -m tasks.natural.evaluate", "python -m tasks.change_detection.evaluate", "python -m tasks.acdc.evaluate"]
    assert NATURAL.command("train", "acdc") == "python -m tasks.acdc.train"
    assert ACDC.command("predict", "acdc") == "python -m tasks.acdc.predict"
    assert ACDC.run_files == ("split.json",) and NATURAL.run_files == CHANGE.run_files == ()
