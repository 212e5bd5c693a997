"""A real comparison on RetinaMNIST sites with the golden options (slow): its runs reproduce the recorded
simulator runs and share the partition and the site sampling, a rerun skips them, and one stopped mid-run
(Ctrl-C) and started again continues from its last completed round and ends with the metrics of the
uninterrupted run (four short simulations in all)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkper_monai.algorithm_registry import ALGORITHMS
from fedkper_monai.cli import main
from fedkper_monai.data import load_datalist
from fedkper_monai.experiment.plan import DONE_FILE
from fedkper_monai.flare.jobspec import site_args
from fedkper_monai.flare.resume import CHECKPOINT_FILE

pytestmark = pytest.mark.slow

_ROUNDS = 2  # the golden runs' (tests/conftest.py GOLDEN_RUN)


def _arguments(data: Path, out: Path, golden_run: list[str], algorithms: str = "ditto") -> list[str]:
    return ["compare", "--data-root", str(data), "--algorithms", algorithms, *golden_run, "--seeds", "0", "--out", str(out)]


def _command(data: Path, out: Path, golden_run: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedkper_monai.cli", *_arguments(data, out, golden_run)]


def _run_dir(out: Path, algorithm: str = "ditto") -> Path:
    return out / algorithm / "seed0" / "workspace" / "server" / "simulate_job"


def _metrics(out: Path, algorithm: str = "ditto") -> Path:
    return _run_dir(out, algorithm) / "metrics.jsonl"


def _round_lines(path: Path) -> list[dict]:
    return [line for line in map(json.loads, path.read_text().splitlines()) if "round" in line and "site" not in line]


def _checkpointed_round(run_dir: Path) -> int | None:
    """The last round the controller checkpointed in ``run_dir`` (written atomically after each aggregation)."""
    try:
        return json.loads((run_dir / CHECKPOINT_FILE).read_text())["completed_round"]
    except (OSError, ValueError, KeyError):
        return None


def _stop_after_checkpoint(command: list[str], run_dir: Path, round_index: int, stderr: Path,
                           timeout: float = 600) -> int:
    """Run ``command``, press Ctrl-C once round ``round_index`` is aggregated and checkpointed; its exit code."""
    # A test run started in the background (`cmd &` without job control, as a CI runner may) ignores SIGINT,
    # and children inherit that: the comparison would never see the Ctrl-C. Give it the default back.
    with open(stderr, "wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and process.poll() is None:
                checkpointed = _checkpointed_round(run_dir)
                if checkpointed is not None and checkpointed >= round_index:
                    break
                time.sleep(0.2)
            assert process.poll() is None, "the comparison ended before it could be stopped"
            process.send_signal(signal.SIGINT)
            return process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()


def _check_the_runs_share_partition_and_sampling(federation: Path, out: Path, printed: str, names: tuple[str, str]) -> None:
    """What an uninterrupted comparison of two algorithms left in ``out`` and printed."""
    lines = {name: [json.loads(line) for line in _metrics(out, name).read_text().splitlines()] for name in names}
    headers = {name: rows[0]["run"] for name, rows in lines.items()}
    assert [headers[name]["algorithm"] for name in names] == list(names)
    assert [headers[name]["job"] for name in names] == list(names)  # compare names each job after its algorithm
    assert headers[names[0]]["seed"] == headers[names[1]]["seed"]
    assert headers[names[0]]["sites"] == headers[names[1]]["sites"] == ["site-1", "site-2", "site-3"]
    sampled = {name: [row["sampled_sites"] for row in rows if "round" in row and "site" not in row]
               for name, rows in lines.items()}
    assert len(sampled[names[0]]) == _ROUNDS and all(len(sites) == 2 for sites in sampled[names[0]])
    assert sampled[names[0]] == sampled[names[1]]
    # The same datalists: both jobs read the one data root, whose files are those recorded in done.json,
    # and each site trained on as many samples in both runs.
    fingerprint = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(federation.glob("*.json")) if p.name != "summary.json"}
    for name in names:
        (client,) = (out / name / "seed0" / "job").glob("*/app/config/config_fed_client.json")
        learner = site_args(json.loads(client.read_text()))
        assert (learner["data_root"], learner["local_epochs"]) == (str(federation.resolve()), 1)
        assert (learner["algorithm"], learner["algorithm_args"]) == (ALGORITHMS[name].strategy, dict(ALGORITHMS[name].params))
        done = json.loads((out / name / "seed0" / DONE_FILE).read_text())
        assert done["settings"]["data"] == fingerprint and done["rounds"] == _ROUNDS
    samples = {name: {(r["round"], r["site"]): r["num_samples"] for r in rows if r.get("task") == "train"}
               for name, rows in lines.items()}
    assert samples[names[0]] == samples[names[1]] and len(samples[names[0]]) == 2 * _ROUNDS
    for (_, site), count in samples[names[1]].items():
        assert count == len(load_datalist(federation / f"{site}.json").training)
    # The table and the report command.
    assert all(name in printed for name in names) and "pers.mean" in printed
    (next_line,) = [line for line in printed.splitlines() if line.startswith("next: fedkper-monai report ")]
    report_argv = next_line.split()[2:]  # report RUN_DIR RUN_DIR --out R
    assert [Path(d).resolve() for d in report_argv[1:3]] == [out / name / "seed0" for name in names]


# One comparison test: each FLARE simulation spends most of its time starting (its rounds take seconds), so
# the uninterrupted comparison is at once the golden check of compare's runs (ditto's is the one of one
# process per site: tests/system/test_threads.py checks it with fewer), the one whose runs share partition
# and sampling, the rerun that skips finished runs, the report's input and the reference of the stopped run.
def test_a_comparison_reproduces_the_recorded_runs_and_a_stopped_one_continues_and_matches_them(
        retina_federation, golden_run_args, tmp_path, capsys):
    from test_simulation import _differences, assert_matches_golden

    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    names = ("fedkper", "ditto")
    argv = _arguments(retina_federation, reference, golden_run_args, ",".join(names))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in names:  # the recorded runs' jobs are named fedkper_medmnist and fedavg_medmnist
        assert_matches_golden(_metrics(reference, name), f"golden_{name}_retina_3sites.jsonl", header_ignored=("job",))
    _check_the_runs_share_partition_and_sampling(retina_federation, reference, printed, names)
    # Rerun: both runs are finished, so nothing runs again and nothing changes.
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()} == before
    report_argv = next(line for line in printed.splitlines() if line.startswith("next: fedkper-monai report ")).split()[2:]
    assert main(report_argv[:-1] + [str(tmp_path / "report")]) == 0
    assert "fedkper" in (tmp_path / "report" / "summary.csv").read_text()

    # The same comparison of ditto alone, stopped once its first round is aggregated (its line waits for the
    # next round's validation) and started again.
    command = _command(retina_federation, stopped, golden_run_args)
    code = _stop_after_checkpoint(command, _run_dir(stopped), 0, tmp_path / "stderr.txt")
    # The user pressed Ctrl-C: one line saying how to continue, the shell's exit code, no traceback.
    said = (tmp_path / "stderr.txt").read_text()
    assert code == 130 and "Traceback" not in said, said[-2000:]
    assert "compare: stopped by Ctrl-C (the same command continues from the last completed round)" in said
    lines_at_stop = len(_round_lines(_metrics(stopped)))
    assert not (stopped / "ditto" / "seed0" / "done.json").exists(), f"stopped after {lines_at_stop} rounds"
    assert lines_at_stop < _ROUNDS
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "continued from its last completed round" in again.stdout
    expected = [json.loads(line) for line in _metrics(reference).read_text().splitlines()]
    got = [json.loads(line) for line in _metrics(stopped).read_text().splitlines()]
    # Each round once, in order; every line equal to the uninterrupted run's (timings aside).
    assert [line["round"] for line in _round_lines(_metrics(stopped))] == list(range(_ROUNDS))
    assert got[0]["run"]["resumed"] and got[0]["run"]["resumed"][0]["round"] <= lines_at_stop + 1
    header_ignored = ("started", "resumed")
    differences = _differences({k: v for k, v in expected[0]["run"].items() if k not in header_ignored},
                               {k: v for k, v in got[0]["run"].items() if k not in header_ignored}, "header")
    differences += [d for i, (e, g) in enumerate(zip(expected[1:], got[1:]), 1) for d in _differences(e, g, f"line {i}")]
    assert len(expected) == len(got) and not differences, differences[:10]
    assert not (stopped / "ditto" / "seed0" / "workspace.stopped").exists(), "what the stop left is removed once done"
    # Nothing of the stopped simulation is still running.
    leftovers = subprocess.run(["pgrep", "-f", str(stopped)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftovers if int(pid) != os.getpid()] == []
