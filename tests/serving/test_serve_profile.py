"""``elastiserve serve --batch-size auto --threads auto``: the profile, the plan, the command."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from elastiserve.cli import main, parser_for
from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.cli_serve import apply_serving_plan
from elastiserve_serve.mar_overrides import read_config
from elastiserve_serve.serve_profile import (
    ProfileError,
    ProfileStopped,
    host_threads,
    profile_mar,
    result_from_json,
    worker_cores,
)

from .bundles import make_bundle
from .tiny import png_bytes

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("env", "workers", "cores", "threads"), [
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "1500"}, 1, 1.5, 1),
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "1500"}, 2, 0.75, 1),
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "4000"}, 2, 2.0, 2),
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "500"}, 1, 0.5, 1),
    ({}, 1, CORES, CORES),  # outside a pod: this process's cores
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "lots"}, 1, CORES, CORES),  # unusable: as outside
    ({"ELASTISERVE_CPU_REQUEST_MILLI": "0"}, 1, CORES, CORES),  # no request: as outside
])
def test_worker_cores_and_threads(env: dict[str, str], workers: int, cores: float,
                                  threads: int) -> None:
    assert worker_cores(workers, env) == pytest.approx(cores)
    assert host_threads(workers, env) == threads


def test_result_from_json_plans_for_the_cores_given() -> None:
    body = {"level": "L2", "budget_s": 0.05, "measurements": [
        {"threads": 1, "batch": 1, "seconds": 0.010},
        {"threads": 2, "batch": 1, "seconds": 0.006},
    ]}
    wide = result_from_json(body, 1.0, cores=8)
    assert wide.plan.threads == 2 and wide.to_json()["cores"] == 8
    # Half a core: both thread counts are CPU bound alike (0.5 / 11.5 ms vs 0.5 / 13.5 ms):
    # one thread is as fast and leaves the core to the frontend.
    assert result_from_json(body, 1.0, cores=0.5).plan.threads == 1
    with pytest.raises(KeyError):
        result_from_json({"level": "L2"}, 1.0, cores=1)


@pytest.fixture(scope="module")
def tiny_mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    bundle = make_bundle(root / "bundle")
    build_archive(bundle, root / "store", "tiny", ArchiveSpec(handler={"control_file": ""}))
    return root / "store" / "tiny.mar"


@pytest.mark.slow
def test_profile_times_the_widest_level_in_a_child(tiny_mar: Path) -> None:
    result = profile_mar(tiny_mar, objective_ms=200, max_batch_delay_ms=5, thread_counts=(1,),
                         cores=1.0, batches=(1, 2, 4, 8))
    assert result.level == "L2"
    assert {m.threads for m in result.measurements} == {1}
    assert [m.batch for m in result.measurements] == [1, 2, 4, 8]  # all fit 77.5 ms
    assert result.plan.batch_size in (1, 2, 4, 8) and result.plan.threads == 1
    assert all(m.seconds > 0 for m in result.measurements)


@pytest.mark.slow
def test_a_profile_that_fails_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mar"
    import zipfile
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("model-config.yaml", "handler: {}\n")  # no bundle inside
    with pytest.raises(ProfileError, match="the profile failed"):
        profile_mar(broken, objective_ms=100, max_batch_delay_ms=5, thread_counts=(1,),
                    cores=1.0)


@pytest.mark.slow
def test_a_profile_is_stopped_when_the_command_is(tiny_mar: Path) -> None:
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: the child is killed at the first poll
    began = time.monotonic()
    with pytest.raises(ProfileStopped):
        profile_mar(tiny_mar, objective_ms=200, max_batch_delay_ms=5, thread_counts=(1,),
                    cores=1.0, stop=stop)
    assert time.monotonic() - began < 5


@pytest.mark.slow
def test_a_fixed_batch_size_with_auto_threads_is_planned_at_that_batch(
        tmp_path: Path, tiny_mar: Path) -> None:
    """``--batch-size 8 --threads auto``: only batch 8 is timed, so the threads written are
    the best for the batch TorchServe will hand over, and the batch size stays 8."""
    mar = tmp_path / "tiny.mar"
    shutil.copy(tiny_mar, mar)
    args = parser_for(["serve"]).parse_args(
        ["serve", "--mar", str(mar), "--batch-size", "8", "--threads", "auto",
         "--objective-ms", "200"])
    result = apply_serving_plan(args, mar, tmp_path)
    assert {m.batch for m in result.measurements} == {8}
    config = read_config(mar)
    assert config["batchSize"] == 8  # as archived: only the threads were planned
    assert config["handler"]["threads"] == result.plan.threads
    assert json.loads((tmp_path / "serving-profile.json").read_text())["plan"]["batch_size"] == 8


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch-size", "auto"], "need --objective-ms"),
    (["--threads", "auto"], "need --objective-ms"),
    (["--objective-ms", "100"], "only used by --batch-size auto"),
])
def test_auto_without_an_objective_is_one_line_and_exit_2(
        tmp_path: Path, tiny_mar: Path, extra: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--mar", str(tiny_mar), "--run-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [["--batch-size", "most"], ["--threads", "0"],
                                   ["--objective-ms", "-3"], ["--objective-ms", "nan"]])
def test_bad_plan_arguments_are_refused_by_the_parser(
        tmp_path: Path, tiny_mar: Path, extra: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--mar", str(tiny_mar), "--run-dir", str(tmp_path), *extra])
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.torchserve
@pytest.mark.slow
def test_serve_auto_registers_the_planned_batch_size(tmp_path: Path, tiny_mar: Path) -> None:
    """The real command: it profiles, rewrites the archive, and TorchServe registers the model
    with the planned batch size (its management API says so); requests are answered."""
    control = tmp_path / "level.json"
    command = [sys.executable, "-m", "elastiserve.cli", "serve", "--mar", str(tiny_mar),
               "--run-dir", str(tmp_path / "run"), "--control-file", str(control),
               "--level", "L2", "--batch-size", "auto", "--threads", "auto",
               "--objective-ms", "200", "--disable-token-auth"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen: dict[str, str] = {}
    try:
        while "inference" not in seen or "management" not in seen:
            line = lines.get(timeout=240)
            assert line, f"serve exited early ({process.poll()}): {seen}"
            key, _, value = line.partition(":")
            seen.setdefault(key.strip(), value.strip())
        assert "profile" in seen and "batch size" in seen["profile"]
        profile = json.loads((tmp_path / "run" / "serving-profile.json").read_text())
        planned = profile["plan"]["batch_size"]
        config = read_config(tmp_path / "run" / "model-store" / "tiny.mar")
        assert config["batchSize"] == planned
        assert config["handler"]["threads"] == profile["plan"]["threads"]
        described = httpx.get(f"{seen['management']}/models/tiny", timeout=30).json()
        assert described[0]["batchSize"] == planned
        url = seen["inference"].replace("<model>", "tiny")
        response = httpx.post(url, content=png_bytes(16, 16), timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["level"] == "L2"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0
