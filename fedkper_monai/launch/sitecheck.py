"""``fedkper-monai site check KIT``: what a hospital's IT verifies before its site joins, one line per check.

Each check returns ``(status, line)``; status is ``ok``, ``FAIL`` or ``skip`` (a check that cannot run because
an earlier one failed, e.g. no data check without a site-config). Checks:

- ``kit``: the folder is a site startup kit (``startup/fed_client.json``, the kit's certificates);
- ``site-config``: ``local/fedkper_site.json`` exists and is valid (:mod:`~fedkper_monai.flare.local_choices`);
- ``data``: the site's datalist loads (schema, labels, every image present) and its first training image reads;
- ``network``: the job's network fits the datalist (classes, spatial dims, image size);
- ``allow-list``: ``local/resources.json`` allows exactly FLARE's defaults and our components: no ``*``, no
  package prefix, nothing missing;
- ``versions``: the installed fedkper-monai and FLARE, FLARE within the range this package supports (the
  server's versions are only known once connected: FLARE compares them at connect);
- ``server``: a TLS connection to the server's host and port with the kit's root CA and client certificate,
  the server's certificate signed by the project's CA and naming the server the kit expects.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any, Callable

from fedkper_monai.errors import FedKPerError

__all__ = ["run_checks", "check_kit", "SUPPORTED_FLARE"]

SUPPORTED_FLARE = ((2, 9), (2, 10))  # [low, high) as setup.cfg's install_requires says
Result = tuple[str, str]


def _client_config(kit: Path) -> dict[str, Any]:
    path = kit / "startup" / "fed_client.json"
    try:
        config = json.loads(path.read_text())
        target = config["servers"][0]["service"]["target"]
        config["client"]["ssl_cert"]  # noqa: B018 - a kit without certificates is no provisioned kit
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise FedKPerError(f"{path}: not a FLARE site kit's client config ({type(error).__name__}: {error})") from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise FedKPerError(f"{path}: servers[0].service.target: {target!r} is not HOST:PORT")
    return config


def _check_data(kit: Path, job: str) -> list[Result]:
    from fedkper_monai.data.datalist import load_datalist
    from fedkper_monai.flare.local_choices import read_site_config

    site = _client_config(kit)["client"].get("fqsn") or kit.name
    chosen = read_site_config(kit / "local")
    if not chosen.get("data_root"):
        return [("FAIL", f"site-config: {kit / 'local' / 'fedkper_site.json'}: none; run `fedkper-monai site-config {kit} "
                         "--data-root DIR`"), ("skip", "data: no site-config"), ("skip", "network: no site-config")]
    path = Path(chosen.get("datalist") or Path(chosen["data_root"]) / f"{site}.json")
    results: list[Result] = [("ok", f"site-config: data {chosen['data_root']}, datalist {path}, device {chosen.get('device') or 'the job’s'}")]
    try:
        datalist = load_datalist(path)
        if not datalist.training:
            raise FedKPerError(f"{path}: training: no entries")
        first = datalist.training[0]["image"]
        with open(first, "rb") as image:
            image.read(1)
    except (FedKPerError, OSError) as error:
        return [*results, ("FAIL", f"data: {error}"), ("skip", "network: the data did not load")]
    results.append(("ok", f"data: {path}: {len(datalist.training)} training, {len(datalist.test)} test entries, images readable"))
    return [*results, _check_network(datalist, job)]


def _check_network(datalist: Any, job: str) -> Result:
    from fedkper_monai.flare.jobspec import JobSettings, job_configs, load_job, site_args

    configs = load_job(job) if Path(job).is_dir() else job_configs(JobSettings(name=f"{job}_medmnist", algorithm=job))
    network = site_args(configs[2]).get("network", {})
    wrong = [f"{key} {network[key]} in the job, {value} in {datalist.path.name}"
             for key, value in (("num_classes", datalist.num_classes), ("spatial_dims", datalist.spatial_dims),
                                ("image_size", datalist.image_size))
             if value is not None and network.get(key) is not None and network[key] != value]
    if wrong:
        return "FAIL", f"network: {network.get('name')} does not fit the data: {'; '.join(wrong)}"
    return "ok", f"network: {network.get('name')} ({network.get('num_classes')} classes) fits {datalist.path.name}"


def _check_allow_list(kit: Path) -> Result:
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    from fedkper_monai.flare.workspace import allowed_classes

    path = kit / "local" / "resources.json"
    try:
        listed = json.loads(path.read_text()).get("class_allow_list")
    except (OSError, ValueError, AttributeError) as error:
        return "FAIL", f"allow-list: {path}: not readable ({error}); run `fedkper-monai allow {kit}`"
    if not isinstance(listed, list):
        return "FAIL", f"allow-list: {path}: class_allow_list: none; run `fedkper-monai allow {kit}`"
    expected = set(DEFAULT_CLASS_ALLOW_LIST) | set(allowed_classes())
    missing, extra = sorted(expected - set(listed)), sorted(set(listed) - expected)
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"not ours {', '.join(extra)}"] if extra else [])
        return "FAIL", f"allow-list: {path}: class_allow_list: {'; '.join(parts)}"
    return "ok", f"allow-list: exactly FLARE's defaults and our {len(allowed_classes())} components"


def _check_versions() -> Result:
    import nvflare

    from fedkper_monai import __version__

    found = tuple(int(part) for part in nvflare.__version__.split(".")[:2] if part.isdigit())
    low, high = SUPPORTED_FLARE
    line = f"versions: fedkper-monai {__version__}, nvflare {nvflare.__version__}"
    if not low <= found < high:
        return "FAIL", f"{line}: this fedkper-monai needs nvflare >={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    return "ok", f"{line} (the server's cannot be read before connecting: compare them with the study's admin)"


def _check_server(kit: Path, timeout: float) -> Result:
    config = _client_config(kit)
    host, _, port = config["servers"][0]["service"]["target"].rpartition(":")
    startup = kit / "startup"
    client = config["client"]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(startup / client["ssl_root_cert"]))
    context.check_hostname = False  # FLARE names the server by its identity (the certificate's CN), checked below
    context.load_cert_chain(str(startup / client["ssl_cert"]), str(startup / client["ssl_private_key"]))
    identity = config["servers"][0].get("identity")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            with context.wrap_socket(raw) as tls:
                subject = dict(pair[0] for pair in tls.getpeercert()["subject"])
    except ssl.SSLError as error:
        return "FAIL", f"server: {host}:{port}: TLS refused with this kit's certificates ({error.reason or error}): another project's kit?"
    except OSError as error:
        return "FAIL", f"server: {host}:{port}: not reachable ({error})"
    if identity and subject.get("commonName") != identity:
        return "FAIL", f"server: {host}:{port}: its certificate names {subject.get('commonName')!r}, the kit expects {identity!r}"
    return "ok", f"server: {host}:{port} answered TLS with the project's certificate ({subject.get('commonName')})"


def check_kit(kit: Path, job: str = "fedkper", timeout: float = 10.0) -> list[Result]:
    """Every check on ``kit``, in order (see the module docstring)."""
    from fedkper_monai.flare.workspace import check_site_folder

    try:
        check_site_folder(kit)
        _client_config(kit)
    except FedKPerError as error:
        return [("FAIL", f"kit: {error}")]
    steps: list[Callable[[], list[Result]]] = [
        lambda: [("ok", f"kit: {kit} (site {_client_config(kit)['client'].get('fqsn') or kit.name})")],
        lambda: _check_data(kit, job), lambda: [_check_allow_list(kit)], lambda: [_check_versions()],
        lambda: [_check_server(kit, timeout)],
    ]
    results: list[Result] = []
    for step in steps:
        try:
            results += step()
        except FedKPerError as error:
            results.append(("FAIL", str(error)))
    return results


def run_checks(kit: Path, job: str = "fedkper", timeout: float = 10.0) -> int:
    """Print one line per check; 0 when none failed, 1 otherwise."""
    results = check_kit(kit, job, timeout)
    for status, line in results:
        print(f"{status:4} {line}", flush=True)
    return 1 if any(status == "FAIL" for status, _ in results) else 0
