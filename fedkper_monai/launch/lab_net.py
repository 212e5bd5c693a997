"""The lab's network: one Linux network namespace per participant, joined by a private bridge.

Layout (``T`` is a short token of this run, so two labs on one host never share a name)::

    namespace fkl<T>-net      the bridge ``br0`` (no address: a switch), one ``v<T>-<i>`` port per participant
    namespace fkl<T>-<name>   ``eth0`` (the veth peer of its port) with 10.213.0.<n>/24, and ``lo``

Nothing is created in the host's own namespace but the namespace files (``/run/netns/fkl<T>-*``) and each
participant's ``/etc/netns/fkl<T>-<name>/hosts`` (which ``ip netns exec`` mounts over ``/etc/hosts``, so the
server is found by its host name). The bridge and every veth live inside the lab's namespaces: deleting them
deletes the links. The subnet is never routed to or from the host: a participant reaches only the others.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedkper_monai.errors import FedKPerError

__all__ = ["LabNetwork", "SUBNET", "lab_leftovers", "namespaces_available"]

SUBNET = "10.213.0"  # a /24 that lives only inside the lab's namespaces (never routed on the host)
PREFIX = "fkl"
NETNS_ETC = Path("/etc/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise FedKPerError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def namespaces_available() -> str | None:
    """None when this process can create network namespaces; else why not (for a skip or an error)."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}probe{secrets.token_hex(2)}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class LabNetwork:
    """The namespaces of ``participants`` (names in start order); ``hosts`` maps extra host names to a participant.

    ``create()`` builds it all, ``teardown()`` removes it all (also what a half-done ``create`` made) and can
    be called more than once.
    """

    participants: list[str]
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> participant whose address it names
    token: str = field(default_factory=lambda: secrets.token_hex(2))
    made: list[str] = field(default_factory=list)  # namespaces created so far, for teardown

    @property
    def bridge_ns(self) -> str:
        return f"{PREFIX}{self.token}-net"

    def namespace(self, participant: str) -> str:
        """The namespace of ``participant`` (its index keeps the name short: ``ip`` allows 15+ characters but
        a participant name such as ``admin@nvidia.com`` is no file name for /etc/netns)."""
        return f"{PREFIX}{self.token}-p{self.participants.index(participant)}"

    def address(self, participant: str) -> str:
        return f"{SUBNET}.{10 + self.participants.index(participant)}"

    def link(self, participant: str) -> tuple[str, str]:
        """``(namespace, link name)`` of ``participant``'s bridge port: set it down to cut its network."""
        return self.bridge_ns, f"v{self.token}-{self.participants.index(participant)}"

    def exec_prefix(self, participant: str) -> list[str]:
        """The command prefix that runs a program inside ``participant``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(participant)]

    def create(self) -> None:
        """Namespaces, the bridge, one veth pair per participant, addresses and hosts files."""
        self._add_namespace(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        lines = ["127.0.0.1 localhost"] + [f"{self.address(target)} {name}" for name, target in self.hosts.items()]
        for participant in self.participants:
            ns = self.namespace(participant)
            self._add_namespace(ns)
            _, port = self.link(participant)
            _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(participant)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            own = f"{self.address(participant)} {participant.replace('@', '-')}"
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text("\n".join([*lines, own]) + "\n")

    @classmethod
    def recorded(cls, participants: list[str], token: str) -> "LabNetwork":
        """The network of an earlier run (``WS/lab/network.json``'s values), to tear down what it left."""
        network = cls(participants, token=token)
        network.made = [network.bridge_ns, *(network.namespace(name) for name in participants)]
        return network

    def _add_namespace(self, ns: str) -> None:
        self.made.append(ns)  # before it exists: a half-made one is removed too
        _ip("netns", "add", ns)

    def set_link(self, participant: str, up: bool) -> None:
        """Take ``participant``'s link down (its packets go nowhere, as when a hospital's line drops) or up."""
        ns, port = self.link(participant)
        _ip("-n", ns, "link", "set", port, "up" if up else "down")

    def teardown(self, grace: float = 10.0) -> None:
        """End every process in the lab's namespaces, delete the namespaces (with their links) and hosts files."""
        pids = [pid for ns in self.made for pid in _namespace_pids(ns)]
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        _signal_all([pid for pid in pids if _alive(pid)], signal.SIGKILL)
        existing = set(_ip("netns", "list", check=False).stdout.split())
        for ns in reversed(self.made):
            if ns in existing:
                _ip("netns", "del", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self.made.clear()


def _namespace_pids(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()] if done.returncode == 0 else []


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (ended, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def lab_leftovers(token: str | None = None) -> list[str]:
    """What a lab left on this host: namespaces, /etc/netns entries, links (``token`` None: any lab's)."""
    start = f"{PREFIX}{token}-" if token else PREFIX
    found = [f"namespace {name}" for name in _ip("netns", "list", check=False).stdout.split() if name.startswith(start)]
    if NETNS_ETC.is_dir():
        found += [f"/etc/netns/{path.name}" for path in NETNS_ETC.iterdir() if path.name.startswith(start)]
    links = _ip("-o", "link", "show", check=False).stdout
    port = re.compile(rf"^\d+: (v{token or '[0-9a-f]{4}'}-\d+)[@:]")
    found += [f"link {match.group(1)}" for match in map(port.match, links.splitlines()) if match]
    return found
