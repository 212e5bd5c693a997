"""``fedkper-monai site-config`` and ``poc run``: a job on FLARE's POC deployment, separate processes on loopback."""

from __future__ import annotations

import json

import pytest

from fedkper_monai.cli import main
from fedkper_monai.flare.poc import free_port, project_yaml


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


def test_site_config_command_writes_the_sites_choices(tmp_path, retina_federation, capsys):
    (tmp_path / "startup").mkdir()
    assert main(["site-config", str(tmp_path), "--data-root", str(retina_federation), "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "local" / "fedkper_site.json").read_text())
    assert written == {"data_root": str(retina_federation.resolve()), "datalist": None, "device": "cpu"}
    assert main(["site-config", str(tmp_path / "nosuch"), "--data-root", str(retina_federation)]) == 2
    assert "no such folder" in capsys.readouterr().err


def _our_processes(marker: str) -> list[str]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if marker in cmdline:
            found.append(f"{process.info['pid']}: {cmdline[:120]}")
    return found


@pytest.mark.slow
def test_poc_run_on_three_loopback_sites_matches_the_simulator(retina_federation, tmp_path, capsys):
    from test_simulation import assert_matches_golden

    workspace = tmp_path / "poc_ws"
    code = main(["poc", "run", "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace", str(workspace),
                 "--rounds", "2", "--sample-fraction", "0.67", "--local-epochs", "1", "--timeout", "300"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 sites connected" in printed and "round 2 of 2 done" in printed and "stopping POC" in printed
    assert not _our_processes(str(workspace)), "every POC process is stopped"
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


def test_the_readme_project_provisions_a_server_and_three_hospitals_that_allow_our_components(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    from fedkper_monai.flare.workspace import allowed_classes

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (project,) = re.findall(r"```yaml\n(api_version: 3.*?)```", readme, flags=re.S)
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
