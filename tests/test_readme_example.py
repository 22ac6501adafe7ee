"""The README's "Testing your app" section, followed by a user in a project of their own.

Its code (alone, and with its ``pyproject.toml`` lines) is read from README.md (so the two
cannot drift), written into an empty directory, and pytest runs there in a subprocess: what
this repo's own pytest configuration provides (``trio_mode``) is not there to lean on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_testing_blocks() -> dict[str, str]:
    """The first ``toml`` and ``python`` code blocks of the "Testing your app" section."""
    text = README.read_text()
    section = text.split("\n## Testing your app\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for language, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL):
        blocks.setdefault(language, body)
    return blocks


def run_pytest_in(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
    )


def test_the_readme_testing_example_passes_in_a_project_set_up_as_the_readme_says(
    tmp_path: Path,
) -> None:
    blocks = readme_testing_blocks()
    assert "toml" in blocks, "the README must show the pyproject.toml lines a user needs"
    (tmp_path / "pyproject.toml").write_text(blocks["toml"])
    (tmp_path / "test_chat.py").write_text(blocks["python"])
    result = run_pytest_in(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_readme_testing_example_passes_copied_alone_into_an_empty_folder(
    tmp_path: Path,
) -> None:
    """What a user does first: the code block, nothing else (no ``trio_mode``).  The
    plugin runs a test of a module that uses hornbeam_trio under Trio by itself."""
    (tmp_path / "test_chat.py").write_text(readme_testing_blocks()["python"])
    result = run_pytest_in(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_plugin_leaves_other_async_tests_to_the_projects_configuration(
    tmp_path: Path,
) -> None:
    """So the test above passes because the example uses hornbeam_trio, not because the
    plugin claims every async test (an asyncio project's would break)."""
    (tmp_path / "test_other.py").write_text("async def test_not_ours():\n    pass\n")
    result = run_pytest_in(tmp_path)
    assert result.returncode != 0
    assert "1 passed" not in result.stdout
