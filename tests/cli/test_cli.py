"""The console script answers --help and version on any install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elastiserve import __version__
from elastiserve.cli import main


def test_version_subcommand_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"elastiserve {__version__}"


def test_help_lists_the_version_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "elastiserve.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "version" in result.stdout
    assert "nested capacities" in result.stdout


def test_unknown_command_is_refused_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_stdlib_operator_module_is_not_shadowed() -> None:
    # Run from the repository root, as `python -m pytest` does: the repo's `operator/` folder
    # must not replace the standard library's module.
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__, operator.itemgetter)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "site-packages" not in result.stdout
    assert "/operator/" not in result.stdout.split()[0]


def _requirements_of(extra: str) -> set[str]:
    from importlib.metadata import requires

    names = set()
    for req in requires("elastiserve") or []:
        name, _, marker = req.partition(";")
        if f'extra == "{extra}"' in marker:
            names.add(name.split(">")[0].split("=")[0].split("<")[0].strip().lower())
    return names


@pytest.mark.parametrize(
    ("extra", "forbidden"),
    [("operator", {"torch", "torchserve"}), ("serve", {"kopf"}), ("train", {"kopf"})],
)
def test_extras_keep_components_apart(extra: str, forbidden: set[str]) -> None:
    required = _requirements_of(extra)
    assert required, f"extra {extra!r} declares nothing"
    assert not required & forbidden


def test_help_imports_no_component() -> None:
    # `elastiserve --help` must stay instant on any install: only the chosen command's module
    # is imported, so neither torch nor kopf is loaded to list the commands.
    code = (
        "import sys; from elastiserve.cli import build_parser; build_parser(None); "
        "print(sorted(m for m in ('torch', 'kopf', 'elastiserve_train', 'elastiserve_serve') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_chosen_command_gets_its_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["level", "--help"])
    assert exc.value.code == 0
    assert "--control-file" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
