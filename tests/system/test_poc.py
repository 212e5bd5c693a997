"""``fedkper-monai site-config`` and ``poc run``: a job on FLARE's POC deployment, separate processes on loopback."""

from __future__ import annotations

import json

import pytest
from system_helpers import kill_processes_of, processes_of

from fedkper_monai.cli import main
from fedkper_monai.launch.poc import free_port, project_yaml


def test_project_yaml_names_the_server_port_the_sites_and_one_admin():
    text = project_yaml(12345, ["site-1", "site-2"])
    assert "fed_learn_port: 12345" in text and "default_host: localhost" in text
    assert text.count("type: client") == 2 and text.count("role: project_admin") == 1
    assert 1024 <= free_port() <= 65535


def test_poc_run_refuses_bad_settings_before_starting_anything(tmp_path, retina_federation, capsys):
    assert main(["poc", "run", "fedkper", "--sites", "3", "--data-root", str(tmp_path / "none"), "--workspace", str(tmp_path / "ws")]) == 2
    assert "--data-root" in capsys.readouterr().err and not (tmp_path / "ws").exists()
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "old.txt").write_text("an earlier run")
    assert main(["poc", "run", "fedkper", "--sites", "2", "--data-root", str(retina_federation), "--workspace", str(tmp_path / "ws")]) == 2
    assert "--sites: 2 sites" in capsys.readouterr().err, "3 site datalists for 2 sites"
    assert main(["poc", "run", "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace", str(tmp_path / "ws")]) == 2
    assert "--workspace" in capsys.readouterr().err and (tmp_path / "ws" / "old.txt").exists()
    for command in (["poc", "run"], ["deploy", "lab"]):  # one option, one check, on both launchers
        assert main([*command, "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace",
                     str(tmp_path / "new"), "--restarts", "-1"]) == 2
        assert "--restarts: must be >= 0, got -1" in capsys.readouterr().err and not (tmp_path / "new").exists()
        assert main([*command, "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace",
                     str(tmp_path / "new"), "--timeout-factor", "0"]) == 2
        assert "--timeout-factor: must be > 0, got 0.0" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_site_config_command_writes_the_sites_choices(tmp_path, retina_federation, capsys):
    (tmp_path / "startup").mkdir()
    assert main(["site-config", str(tmp_path), "--data-root", str(retina_federation), "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "local" / "fedkper_site.json").read_text())
    assert written == {"data_root": str(retina_federation.resolve()), "datalist": None, "device": "cpu"}
    assert main(["site-config", str(tmp_path / "nosuch"), "--data-root", str(retina_federation)]) == 2
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_poc_run_on_three_loopback_sites_matches_the_simulator(retina_federation, tmp_path, capsys):
    from test_simulation import assert_matches_golden

    workspace = tmp_path / "poc_ws"
    code = main(["poc", "run", "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace", str(workspace),
                 "--rounds", "2", "--sample-fraction", "0.67", "--local-epochs", "1", "--timeout", "300"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 sites connected" in printed and "round 1 done (2 of 2;" in printed and "stopping POC" in printed
    assert not processes_of(str(workspace)), "every POC process is stopped"
    result = workspace / "result"
    assert (result / "workspace" / "global_model.pt").exists()
    models = json.loads((result / "personalized_models.json").read_text())
    assert models and all(path.endswith("personalized_model.pt") for path in models.values())
    # The same run as the recorded simulator run: same sampled sites, same figures (CPU, one thread per site);
    # the job id differs (the simulator's "simulate_job", POC's uuid).
    assert_matches_golden(result / "workspace" / "metrics.jsonl", "golden_fedkper_retina_3sites.jsonl", header_ignored=("job_id",))


def test_provisioning_with_our_builder_makes_kits_that_allow_our_components(tmp_path):
    import subprocess
    import sys

    from fedkper_monai.flare.workspace import allowed_classes

    project = tmp_path / "project.yml"
    project.write_text(project_yaml(free_port(), ["hospital-a"], name="demo"))
    done = subprocess.run([sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project), "-w", str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for kit in ("server", "hospital-a"):
        found = list((tmp_path / "ws").glob(f"demo/prod_*/{kit}/local/resources.json"))
        assert found, kit
        allow_list = json.loads(found[0].read_text())["class_allow_list"]
        assert set(allowed_classes()) <= set(allow_list) and "*" not in allow_list


def test_the_real_sites_page_project_provisions_a_server_and_three_hospitals_that_allow_our_components(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    from fedkper_monai.flare.workspace import allowed_classes

    page = (Path(__file__).resolve().parents[2] / "docs" / "real-sites.md").read_text(encoding="utf-8")
    (project,) = re.findall(r"```yaml\n(api_version: 3.*?)```", page, flags=re.S)
    (tmp_path / "project.yml").write_text(project)
    done = subprocess.run([sys.executable, "-m", "nvflare.cli", "provision", "-p", "project.yml", "-w", str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    kits = sorted(path.parent.parent.name for path in (tmp_path / "ws").glob("fedkper_study/prod_*/*/startup/start.sh"))
    assert kits == ["fl.study-server.org", "hospital-a", "hospital-b", "hospital-c"]
    for kit in kits:
        for name in ("resources.json", "resources.json.default"):  # POC rewrites the server's from the default
            (resources,) = (tmp_path / "ws").glob(f"fedkper_study/prod_*/{kit}/local/{name}")
            assert set(allowed_classes()) <= set(json.loads(resources.read_text())["class_allow_list"]), (kit, name)


def _kill_participant(workspace, name: str) -> int:
    """SIGKILL every process running from ``name``'s POC kit (its parent and the job processes it started)."""
    kits = list(workspace.glob(f"poc/*/prod_*/{name}"))
    assert len(kits) == 1, kits
    return kill_processes_of(str(kits[0]))


def _server_round_lines(workspace) -> list[dict]:
    """Round lines of the newest job's metrics.jsonl on the POC server (while the job runs)."""
    found = sorted(workspace.glob("poc/*/prod_*/server/*/metrics.jsonl"), key=lambda path: path.stat().st_mtime)
    if not found:
        return []
    try:
        lines = [json.loads(line) for line in found[-1].read_text().splitlines()]
    except ValueError:
        return []  # a line half-written
    return [line for line in lines if "round" in line and "site" not in line]


@pytest.mark.slow
def test_poc_run_survives_a_killed_site_and_a_killed_server(retina_federation, tmp_path):
    """Issue 12's drill: 3 sites on loopback; one site killed mid-run (the job goes on with the others and the
    site is started again), then the server killed (started again; the job, submitted again, continues from its
    last completed round): every round once in metrics.jsonl, no process left."""
    import subprocess
    import sys
    import time

    workspace = tmp_path / "poc_ws"
    rounds = 4
    command = [sys.executable, "-m", "fedkper_monai.cli", "poc", "run", "fedkper", "--sites", "3", "--data-root",
               str(retina_federation), "--workspace", str(workspace), "--rounds", str(rounds), "--sample-fraction", "0.67",
               "--local-epochs", "3", "--min-task-timeout", "20", "--timeout-factor", "1.5", "--timeout", "900"]
    log = open(tmp_path / "poc_run.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600

        def wait_for_round(index: int) -> None:
            while not any(line["round"] >= index for line in _server_round_lines(workspace)):
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "poc_run.log").read_text()[-3000:]
                time.sleep(0.5)

        # Round r's line is written in round r + 1's broadcast, once every site answered for model r or timed
        # out. site-3 is killed as round 1 starts (it is sampled in rounds 0, 1 and 3 with seed 0); by the
        # round-2 line its failed task is in a completed round, and the server is killed during round 3.
        wait_for_round(0)
        assert _kill_participant(workspace, "site-3") >= 1
        wait_for_round(2)
        assert _kill_participant(workspace, "server") >= 1
        assert process.wait(timeout=900) == 0, (tmp_path / "poc_run.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    printed = (tmp_path / "poc_run.log").read_text()
    assert "site-3 exited during the job; starting it again" in printed
    assert "the server exited during job" in printed and "continues the stopped job from its last completed round" in printed
    records = [json.loads(line) for line in (workspace / "result" / "workspace" / "metrics.jsonl").read_text().splitlines()]
    rounds_written = [r["round"] for r in records if "round" in r and "site" not in r]
    assert rounds_written == list(range(rounds)), "each round once, in order"
    header = records[0]["run"]
    # Killed during round 3 (or, when round 3 had just been aggregated, before the final validation).
    assert header["resumed"] and header["resumed"][0]["round"] in (3, 4)
    failed = [r for r in records if r.get("status") == "failed"]
    assert any(r["site"] == "site-3" for r in failed), "the killed site's task failed and the round went on"
    assert "failed: site-3 in round" in printed, "poc run names the failed tasks"
    assert not processes_of(str(workspace)), "every POC process is stopped"


@pytest.mark.slow
def test_a_site_that_never_connects_is_a_clear_error_in_bounded_time(retina_federation, tmp_path, monkeypatch):
    """site-3's machine is down (its process is never started): poc run stops within its connect timeout,
    naming who connected, and leaves no process behind."""
    import time

    from fedkper_monai.errors import FedKPerError
    from fedkper_monai.launch import poc
    from fedkper_monai.launch.participants import Participants

    real_start = Participants.start
    monkeypatch.setattr(Participants, "start", lambda self, name, kit, env: None if name == "site-3" else real_start(self, name, kit, env))
    workspace = tmp_path / "poc_ws"
    run = poc.PocRun(job="fedkper", sites=3, data_root=retina_federation, workspace=workspace, connect_timeout=25.0)
    started = time.monotonic()
    with pytest.raises(FedKPerError, match=r"2 of 3 sites connected in time \(site-1, site-2\)"):
        poc.poc_run(run)
    assert time.monotonic() - started < 120
    assert not processes_of(str(workspace)), "every POC process is stopped"


@pytest.mark.slow
def test_a_site_whose_data_is_broken_is_named_and_the_job_goes_on(retina_federation, tmp_path, capsys):
    """site-2's datalist names an image that does not exist: its tasks fail with the file in the reason, the
    rounds go on with site-1, and poc run prints each failure."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(retina_federation, data)
    broken = json.loads((data / "site-2.json").read_text())
    broken["training"][0]["image"] = "missing/nowhere.png"
    (data / "site-2.json").write_text(json.dumps(broken))
    for name in ("site-3.json",):
        (data / name).unlink()
    workspace = tmp_path / "poc_ws"
    code = main(["poc", "run", "fedkper", "--sites", "2", "--data-root", str(data), "--workspace", str(workspace),
                 "--rounds", "2", "--sample-fraction", "1.0", "--local-epochs", "1", "--timeout", "300"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "failed: site-2 in round 0 (train)" in printed
    assert "site-2's log" in printed and "site-2.json: training[0].image: image file not found" in printed
    records = [json.loads(line) for line in (workspace / "result" / "workspace" / "metrics.jsonl").read_text().splitlines()]
    assert [r["aggregated_sites"] for r in records if "aggregated_sites" in r] == [["site-1"], ["site-1"]]
    assert not processes_of(str(workspace)), "every POC process is stopped"
