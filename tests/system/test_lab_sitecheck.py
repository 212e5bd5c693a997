"""``fedkper-monai site check KIT`` on real provisioned kits (fast: provisioning only, a TLS listener with the
server kit's own certificates on loopback standing in for the server's port)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.launch.poc import free_port, project_yaml


def _provision(folder: Path, name: str, port: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "project.yml").write_text(project_yaml(port, ["site-1"], name=name))
    done = subprocess.run([sys.executable, "-m", "nvflare.cli", "provision", "-p", "project.yml", "-w", "ws"], cwd=folder,
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "HOME": str(folder)})
    assert done.returncode == 0, done.stdout + done.stderr
    (prod,) = (folder / "ws" / name).glob("prod_*")
    return prod


class _TlsListener:
    """The server kit's port as FLARE opens it: TLS with the server's certificate, client certificates required."""

    def __init__(self, server_kit: Path, port: int) -> None:
        startup = server_kit / "startup"
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(startup / "rootCA.pem"))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(str(startup / "server.crt"), str(startup / "server.key"))
        self.socket = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                connection.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture(scope="module")
def kits(tmp_path_factory, retina_federation):
    """Our project's server and site-1 kits (site-1 configured on real data), and another project's site-1 kit
    aimed at the same port."""
    port = free_port()
    root = tmp_path_factory.mktemp("kits")
    ours, other = _provision(root / "ours", "ours", port), _provision(root / "other", "other", port)
    assert main(["site-config", str(ours / "site-1"), "--data-root", str(retina_federation), "--device", "cpu"]) == 0
    assert main(["site-config", str(other / "site-1"), "--data-root", str(retina_federation), "--device", "cpu"]) == 0
    listener = _TlsListener(ours / "server", port)
    yield {"site": ours / "site-1", "other": other / "site-1"}
    listener.close()


def _check(capsys, kit: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["site", "check", str(kit), "--timeout", "5", *extra])
    return code, capsys.readouterr().out.splitlines()


def test_a_ready_site_passes_every_check_one_line_each(kits, capsys):
    code, lines = _check(capsys, kits["site"])
    assert code == 0, lines
    assert [line.split()[1] for line in lines] == ["kit:", "site-config:", "data:", "network:", "allow-list:", "versions:", "server:"]
    assert all(line.startswith("ok ") for line in lines), lines
    assert "answered TLS with the project's certificate (server)" in lines[-1]


def test_a_kit_of_another_project_is_refused_at_the_tls_check(kits, capsys):
    code, lines = _check(capsys, kits["other"])
    assert code == 1
    assert lines[-1].startswith("FAIL server: localhost:") and "TLS refused with this kit's certificates" in lines[-1]


def test_a_widened_or_short_allow_list_fails_naming_the_entries(kits, capsys, tmp_path):
    import shutil

    kit = tmp_path / "site-1"
    shutil.copytree(kits["site"], kit)
    resources = kit / "local" / "resources.json"
    content = json.loads(resources.read_text())
    ours = "fedkper_monai.flare.executor.FedKPerExecutor"
    content["class_allow_list"] = [entry for entry in content["class_allow_list"] if entry != ours] + ["*"]
    resources.write_text(json.dumps(content))
    code, lines = _check(capsys, kit)
    (line,) = [line for line in lines if "allow-list:" in line]
    assert code == 1 and line.startswith("FAIL") and f"missing {ours}" in line and "not ours *" in line


def test_data_that_does_not_fit_the_job_or_is_missing_fails_naming_the_file(kits, capsys, tmp_path, retina_federation):
    data = tmp_path / "data"
    data.mkdir()
    datalist = json.loads((retina_federation / "site-1.json").read_text())
    datalist["training"] = [{**entry, "image": str(retina_federation / entry["image"])} for entry in datalist["training"]]
    datalist["test"] = [{**entry, "image": str(retina_federation / entry["image"])} for entry in datalist["test"]]
    (data / "site-1.json").write_text(json.dumps({**datalist, "num_classes": 7, "class_names": list("abcdefg")}))
    assert main(["site-config", str(kits["site"]), "--data-root", str(data)]) == 0
    try:
        code, lines = _check(capsys, kits["site"])
        assert code == 1 and "FAIL network: reference_cnn does not fit the data: num_classes 5 in the job, 7 in site-1.json" in lines
        datalist["training"][0]["image"] = str(data / "gone.png")
        (data / "site-1.json").write_text(json.dumps(datalist))
        code, lines = _check(capsys, kits["site"])
        (line,) = [line for line in lines if " data:" in line]
        assert line.startswith("FAIL data:") and "site-1.json: training[0].image" in line, line
    finally:
        assert main(["site-config", str(kits["site"]), "--data-root", str(retina_federation), "--device", "cpu"]) == 0


def test_no_server_listening_and_no_site_config_are_each_one_failed_line(capsys, tmp_path):
    kit = _provision(tmp_path / "lone", "lone", free_port()) / "site-1"
    code, lines = _check(capsys, kit)
    assert code == 1
    assert lines[1].startswith("FAIL site-config:") and "fedkper-monai site-config" in lines[1]
    assert lines[2] == "skip data: no site-config"
    assert lines[-1].startswith("FAIL server: localhost:") and "not reachable" in lines[-1]
