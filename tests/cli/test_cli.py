"""The console script answers --help and version on any install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# ------------------------------------------------------------------ bad input: one line, exit 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real bundle, a directory that is not one, a .mar elastiserve did not write, a FIFO."""
    import zipfile

    from tests.serving.bundles import make_bundle

    root = tmp_path_factory.mktemp("bad-inputs")
    foreign = root / "foreign.mar"
    with zipfile.ZipFile(foreign, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", '{"model": {"handler": "h.py"}}')
        mar.writestr("h.py", "import os\n")
    fifo = root / "fifo.json"
    os.mkfifo(fifo)
    (root / "empty").mkdir()
    (root / "a-file").write_text("x")
    return {"bundle": make_bundle(root / "bundle"), "empty": root / "empty",
            "foreign": foreign, "fifo": fifo, "file": root / "a-file", "root": root}


BAD_INPUTS: dict[str, list[str]] = {
    # the command line itself
    "unknown-flag": ["--bogus"],
    "version-extra-argument": ["version", "extra"],
    # train
    "train-bad-number": ["train", "--out", "{root}/t", "--levels", "abc"],
    "train-bad-float": ["train", "--out", "{root}/t", "--width-mult", "wide"],
    "train-unknown-arch": ["train", "--out", "{root}/t", "--arch", "nope"],
    "train-missing-out": ["train"],
    "train-bad-anchor": ["train", "--out", "{root}/t", "--anchor", "0.1,x"],
    "train-missing-dataset": ["train", "--out", "{root}/t", "--dataset", "cifar10",
                              "--data-path", "{root}/no-such-data"],
    # archive
    "archive-missing-bundle": ["archive", "{root}/no-such-bundle", "--name", "m"],
    "archive-not-a-bundle": ["archive", "{empty}", "--name", "m"],
    "archive-missing-name": ["archive", "{bundle}"],
    "archive-name-is-a-path": ["archive", "{bundle}", "--name", "../m"],
    "archive-zero-workers": ["archive", "{bundle}", "--name", "m", "--workers", "0"],
    "archive-bad-number": ["archive", "{bundle}", "--name", "m", "--batch-size", "8x"],
    "archive-export-path-is-a-file": ["archive", "{bundle}", "--name", "m",
                                      "--export-path", "{file}"],
    # serve
    "serve-missing-mar": ["serve", "--mar", "{root}/no-such.mar", "--run-dir", "{root}/r"],
    "serve-foreign-mar": ["serve", "--mar", "{foreign}", "--run-dir", "{root}/r"],
    "serve-not-a-bundle": ["serve", "--bundle", "{empty}", "--run-dir", "{root}/r"],
    "serve-unknown-level": ["serve", "--bundle", "{bundle}", "--level", "L9",
                            "--run-dir", "{root}/r"],
    "serve-port-out-of-range": ["serve", "--bundle", "{bundle}", "--port", "70000"],
    "serve-negative-workers": ["serve", "--bundle", "{bundle}", "--workers", "-1"],
    "serve-bad-delay": ["serve", "--bundle", "{bundle}", "--max-batch-delay-ms", "soon"],
    "serve-no-source": ["serve"],
    "serve-missing-key-file": ["serve", "--bundle", "{bundle}", "--key-file",
                               "{root}/no-such-key", "--run-dir", "{root}/r"],
    # level
    "level-unknown-action": ["level", "bogus"],
    "level-set-without-level": ["level", "set", "--bundle", "{bundle}",
                                "--control-file", "{root}/l1.json"],
    "level-unknown-name": ["level", "set", "L9", "--bundle", "{bundle}",
                           "--control-file", "{root}/l2.json"],
    "level-index-past-the-last": ["level", "set", "3", "--bundle", "{bundle}",
                                  "--control-file", "{root}/l3.json"],
    "level-digit-int-refuses": ["level", "set", "\u00b2", "--bundle", "{bundle}",
                                "--control-file", "{root}/l4.json"],
    "level-no-served-bundle": ["level", "set", "0", "--control-file", "{root}/l5.json"],
    "level-missing-mar": ["level", "set", "0", "--mar", "{root}/no-such.mar",
                          "--control-file", "{root}/l6.json"],
    "level-not-a-bundle": ["level", "set", "0", "--bundle", "{empty}",
                           "--control-file", "{root}/l7.json"],
    "level-show-a-fifo": ["level", "show", "--control-file", "{fifo}"],
    # demo
    "demo-negative-peak": ["demo", "--peak-factor", "-1"],
    "demo-zero-images": ["demo", "--images-per-request", "0"],
    "demo-bad-objective": ["demo", "--objective-ms", "fast"],
    "demo-not-a-bundle": ["demo", "--bundle", "{empty}", "--run-dir", "{root}/d"],
    # operator
    "operator-bad-port": ["operator", "--metrics-port", "x"],
    "operator-unknown-flag": ["operator", "--bogus"],
}
"""Every subcommand of ``elastiserve`` (elastiserve/cli.py's COMMANDS and ``version``)."""


def _argv(template: list[str], inputs: dict[str, Path]) -> list[str]:
    return [word.format(**{k: str(v) for k, v in inputs.items()}) for word in template]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def test_every_subcommand_has_bad_input_cases() -> None:
    from elastiserve.cli import COMMANDS

    covered = {argv[0] for argv in BAD_INPUTS.values()}
    assert {c.name for c in COMMANDS} | {"version"} <= covered


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(
    case: str, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    code = _exit_code(_argv(BAD_INPUTS[case], inputs))
    err = capsys.readouterr().err
    assert code == 2, (case, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), (case, err)
    assert lines[0].startswith("elastiserve"), lines[0]


@pytest.mark.parametrize("case", ["archive-not-a-bundle", "serve-foreign-mar",
                                  "level-unknown-name", "train-bad-number"])
def test_the_console_script_answers_in_one_line_too(case: str, inputs: dict[str, Path]) -> None:
    """The real entry point, as a shell runs it: no warning, log line or traceback around."""
    script = Path(sys.executable).with_name("elastiserve")
    result = subprocess.run([str(script), *_argv(BAD_INPUTS[case], inputs)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unexpected_error_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import elastiserve_serve.cli_level as cli_level

    def bug(_: object) -> int:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli_level, "run", bug)
    assert main(["level", "show"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "internal error" in err and "Traceback" not in err
