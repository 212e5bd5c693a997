"""Issue 13, the front door: every setting of ``simulate``, ``export`` and ``compare`` is checked before FLARE
starts (one line naming the option, exit code 2, nothing written), and the simulator process never waits
forever (a site that cannot start ends the run at once; the last line is the first site error)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.launch.process import first_error, run_watched, run_with_retries

DEMO = "jobs/fedkper_demo"
MEDMNIST = "jobs/fedkper_medmnist"


@pytest.fixture
def data_root(tmp_path) -> Path:
    """Five site datalists (headers only: the checks never open an image)."""
    root = tmp_path / "data"
    root.mkdir()
    for k in range(1, 6):
        header = {"num_classes": 5, "class_names": list("abcde"), "spatial_dims": 2, "image_size": [28, 28],
                  "training": [], "test": []}
        (root / f"site-{k}.json").write_text(json.dumps(header))
    return root


def _error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--rounds", "-3"], "--rounds: must be at least 1, got -3"),
        (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
        (["--sample-fraction", "1.5"], "--sample-fraction: must be in (0, 1] (share of sites trained per round), got 1.5"),
        (["--sample-fraction", "0"], "--sample-fraction: must be in (0, 1] (share of sites trained per round), got 0.0"),
        (["--local-epochs", "0"], "--local-epochs: must be at least 1, got 0"),
        (["--validate-every", "-1"], "--validate-every: must be at least 0, got -1"),
        (["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
        (["-t", "0"], "-t: must be at least 1, got 0"),
    ],
)
def test_simulate_refuses_settings_out_of_range_at_once(options, expected, data_root, tmp_path, capsys):
    workspace = tmp_path / "ws"
    started = time.perf_counter()
    code = main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "5", "--data-root", str(data_root), *options])
    assert (code, _error(capsys)) == (2, f"fedkper-monai simulate: error: {expected}")
    assert time.perf_counter() - started < 1.0
    assert not workspace.exists()


def test_simulate_needs_as_many_sites_as_the_data_root_has_datalists(data_root, tmp_path, capsys):
    workspace = tmp_path / "ws"
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "7", "--data-root", str(data_root)]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: -n: 7 sites, but {data_root} holds datalists for 5 "
                              "(site-1 .. site-5): use -n 5")
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "2", "--data-root", str(data_root)]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: -n: 2 sites, but {data_root} holds 5 site datalists: "
                              "site-3 .. site-5 would not train; use -n 5")
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "0", "--data-root", str(data_root)]) == 2
    assert _error(capsys) == "fedkper-monai simulate: error: -n: must be at least 1, got 0"
    assert not workspace.exists()


def test_simulate_needs_data_that_fits_the_job(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDKPER_DATA_ROOT", raising=False)
    workspace = tmp_path / "ws"
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "5"]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: --data-root: {MEDMNIST} reads no built-in data: give "
                              "the folder made by `fedkper-monai prepare` (it also sizes the network)")
    missing = tmp_path / "nowhere"
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "5", "--data-root", str(missing)]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: --data-root: {missing}: no such folder (give a folder "
                              "made by `fedkper-monai prepare`)")
    # The demo job's 8-class network against 5-class data named by the environment.
    monkeypatch.setenv("FEDKPER_DATA_ROOT", str(data_root))
    assert main(["simulate", DEMO, "-w", str(workspace), "-n", "5"]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: --data-root: {data_root / 'site-1.json'} has 5 classes "
                              f"but the network of {DEMO} has 8: pass --data-root {data_root} to size it from the data")
    assert not workspace.exists()


def test_datalists_named_after_hospitals_need_flare_site_names(tmp_path, capsys):
    root = tmp_path / "hospitals"
    root.mkdir()
    (root / "hospital-a.json").write_text("{}")
    assert main(["simulate", MEDMNIST, "-w", str(tmp_path / "ws"), "-n", "1", "--data-root", str(root)]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: --data-root: {root}: no site-*.json; --data-root must "
                              "hold the output of `fedkper-monai prepare` (it holds hospital-a.json: FLARE's simulator "
                              "names its sites site-1 .. site-N; prepare the manifest with --site-names VALUE=site-1 ... "
                              "to simulate it)")


def test_a_workspace_with_an_earlier_run_is_replaced_only_with_overwrite(data_root, tmp_path, capsys):
    workspace = tmp_path / "ws"
    (workspace / "server").mkdir(parents=True)
    (workspace / "local").mkdir()
    assert main(["simulate", MEDMNIST, "-w", str(workspace), "-n", "5", "--data-root", str(data_root)]) == 2
    assert _error(capsys) == (f"fedkper-monai simulate: error: -w: {workspace} holds an earlier run (server): pass "
                              "--overwrite to replace it, or choose another workspace")
    assert sorted(p.name for p in workspace.iterdir()) == ["local", "server"]


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], "--network-from: required: a site's datalist (or a prepared folder) sets the network's classes, size and "
             "channels (the job's own network is reference_cnn, 3 input channel(s), 5 classes, 28x28)"),
        (["--network-from", "nowhere.json"], "--network-from: nowhere.json: not found (give a datalist or a folder made "
                                             "by `fedkper-monai prepare`)"),
        (["--rounds", "-1"], "--rounds: must be at least 1, got -1"),
        (["--sample-fraction", "1.5"], "--sample-fraction: must be in (0, 1] (share of sites trained per round), got 1.5"),
    ],
)
def test_export_refuses_a_job_that_cannot_run(options, expected, tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["export", MEDMNIST, "--out", str(out), *options]) == 2
    assert _error(capsys) == f"fedkper-monai export: error: {expected}"
    assert not out.exists()


def test_export_refuses_an_existing_output(data_root, tmp_path, capsys):
    out = tmp_path / "job"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    assert main(["export", MEDMNIST, "--out", str(out), "--network-from", str(data_root)]) == 2
    assert _error(capsys) == (f"fedkper-monai export: error: --out: {out} exists and is not empty: pass --overwrite "
                              "to replace it, or choose another")


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
        (["--sample-fraction", "2"], "--sample-fraction: must be in (0, 1] (share of sites trained per round), got 2.0"),
        (["--retries", "-1"], "--retries: must be at least 0, got -1"),
        (["--seeds", "0,-2"], "--seed: must be in [0, 4294967295], got -2"),
        (["-n", "4"], "-n: 4 sites, but {root} holds 5 site datalists: site-5 would not train; use -n 5"),
    ],
)
def test_compare_refuses_settings_before_any_run(options, expected, data_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["compare", "--data-root", str(data_root), "--out", str(out), *options]) == 2
    assert _error(capsys) == "fedkper-monai compare: error: " + expected.format(root=data_root)
    assert not out.exists()


# --- the simulator process -----------------------------------------------------------------------------

_FAKE_SITE_CLASH = """
import sys, time
print("2026-01-01 - INFO - starting", flush=True)
print("OSError: [Errno 98] Address already in use", flush=True)
time.sleep(120)
"""

_FAKE_CLASH_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("1")
    print("RuntimeError: Failed to create connection to the child process in SimulatorRunner, timeout: 60.0", flush=True)
    time.sleep(120)
print("done", flush=True)
"""

_FAKE_SITE_ERROR = """
print("2026-01-01 - ERROR - [site-2] Exception in START_RUN: fedkper_monai.errors.DataError: /d/site-2.json: training[0].image: file not found", flush=True)
print("2026-01-01 - ERROR - SimulatorRunner: run_client_thread error", flush=True)
print("RuntimeError: simulator failed", flush=True)
raise SystemExit(1)
"""


def test_a_site_that_cannot_start_ends_the_run_at_once(tmp_path):
    log = tmp_path / "sim.log"
    started = time.perf_counter()
    result = run_watched([sys.executable, "-c", _FAKE_SITE_CLASH], {}, log, poll_seconds=0.1)
    assert time.perf_counter() - started < 10
    assert (result.port_clash, result.cause) == (True, "OSError: [Errno 98] Address already in use")
    assert "Address already in use" in log.read_text()


def test_a_port_clash_is_retried_with_a_fresh_start(tmp_path):
    retried = []
    command = [sys.executable, "-c", _FAKE_CLASH_ONCE, str(tmp_path / "marker")]
    result = run_with_retries(command, {}, tmp_path / "sim.log", attempts=2, on_retry=lambda r, k: retried.append(k))
    assert (result.code, result.port_clash, retried) == (0, False, [1])


def test_the_first_site_error_is_the_cause_not_flares_wrapper(tmp_path):
    result = run_watched([sys.executable, "-c", _FAKE_SITE_ERROR], {}, tmp_path / "sim.log", poll_seconds=0.1)
    assert (result.code, result.cause) == (1, "/d/site-2.json: training[0].image: file not found")
    assert first_error(["2026 - ERROR - something broke", "ValueError: later"]) == "something broke"
    assert first_error(["all fine"]) is None


def test_verbose_output_drops_only_known_flare_deprecation_lines(tmp_path, capsys):
    fake = ("print(\"WARNING: 'nvflare simulator' is deprecated. Use 'python job.py' with SimEnv instead.\")\n"
            "print('2026 - WARNING - learner.py:49: DeprecationWarning: ModelLearner is deprecated but remains')\n"
            "print('2026 - WARNING - some other warning')\n")
    assert run_watched([sys.executable, "-c", fake], {}, tmp_path / "sim.log", echo=True, poll_seconds=0.1).code == 0
    assert capsys.readouterr().out == "2026 - WARNING - some other warning\n"
    assert len((tmp_path / "sim.log").read_text().splitlines()) == 3, "the log keeps every line"


def test_a_site_that_dies_at_start_ends_the_run_but_one_that_dies_later_does_not(tmp_path):
    """FLARE's line for a site process that is gone: at start (no task finished yet) the round would wait for
    it until the long first timeout, so the run starts again; mid-run the controller's failure handling
    covers it (tests/system/test_failing_sites.py kills a site on purpose)."""
    died = "2026 - SimulatorClientRunner - ERROR - Communication error with client site-3: [Errno 104] Connection reset by peer"
    at_start = f"import time\nprint({died!r}, flush=True)\ntime.sleep(60)\n"
    started = time.perf_counter()
    result = run_watched([sys.executable, "-c", at_start], {}, tmp_path / "start.log", poll_seconds=0.1)
    assert result.port_clash and "site-3" in result.cause and time.perf_counter() - started < 10
    later = f"print('2026 - INFO - Finished one task run for client: site-2 interval: 0.25', flush=True)\nprint({died!r}, flush=True)\n"
    result = run_watched([sys.executable, "-c", later], {}, tmp_path / "later.log", poll_seconds=0.1)
    assert not result.port_clash and result.code == 0


def test_a_simulator_that_does_not_exit_after_the_job_finished_is_ended(tmp_path):
    """FLARE's simulator with fewer site processes than sites now and then keeps a site worker polling a stopped
    server after the job has ended (seen in CI, over ten minutes): the watcher ends it once the controller's
    last line is older than the grace, and the run counts as finished; a simulator that exits is left alone."""
    finished = "print('2026 - FedKPerController - INFO - finished 2 rounds; metrics in /w/metrics.jsonl', flush=True)\n"
    hanging = finished + "import time\ntime.sleep(120)\n"
    started = time.perf_counter()
    result = run_watched([sys.executable, "-c", hanging], {}, tmp_path / "hang.log", poll_seconds=0.1, exit_grace_seconds=1.0)
    assert (result.code, result.lingered, result.port_clash) == (0, True, False)
    assert time.perf_counter() - started < 20, "ended after the grace, not after the sleep"
    assert "had not exited 1 s after the job finished; it was ended" in (tmp_path / "hang.log").read_text()
    exiting = finished + "import time\ntime.sleep(2)\n"
    result = run_watched([sys.executable, "-c", exiting], {}, tmp_path / "exit.log", poll_seconds=0.1, exit_grace_seconds=10.0)
    assert (result.code, result.lingered) == (0, False)
    unfinished = "import time\ntime.sleep(3)\nraise SystemExit(3)\n"  # no finished line: never ended early
    result = run_watched([sys.executable, "-c", unfinished], {}, tmp_path / "unfinished.log", poll_seconds=0.1, exit_grace_seconds=0.5)
    assert (result.code, result.lingered) == (3, False)
