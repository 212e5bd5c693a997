"""A FLARE provisioning builder: every server and site kit allows our jobs' component classes from the start.

Add it to a ``project.yml`` after ``StaticFileBuilder`` (which writes ``local/resources.json.default``) and
before ``SignatureBuilder``::

    builders:
      - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
      - path: nvflare.lighter.impl.static_file.StaticFileBuilder
      - path: fedkper_monai.flare.provision.AllowFedKPerComponents
      - path: nvflare.lighter.impl.cert.CertBuilder
      - path: nvflare.lighter.impl.signature.SignatureBuilder

``nvflare provision``, ``nvflare poc prepare -i`` and ``PocEnv(project_conf_path=...)`` then produce kits that
run our jobs without a separate ``fedkper-monai allow`` per site (which does the same to an existing kit).
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.lighter.spec import Builder

from fedkper_monai.flare.workspace import allow_components
from fedkper_monai.io import atomic_write_json

__all__ = ["AllowFedKPerComponents"]


class AllowFedKPerComponents(Builder):
    """Write the exact class paths of our jobs into each server and client kit's ``local/resources.json``, and
    into its ``resources.json.default``: FLARE's POC preparation rewrites the server's ``resources.json`` from
    the default file after provisioning."""

    def build(self, project, ctx) -> None:  # noqa: ANN001 - FLARE's Project and ProvisionContext
        participants = [project.get_server(), *project.get_clients()]
        for participant in participants:
            if participant is None:
                continue
            written = allow_components(ctx.get_ws_dir(participant), create=True)
            default = Path(written).with_name("resources.json.default")
            if default.exists():
                resources = json.loads(default.read_text())
                resources["class_allow_list"] = json.loads(Path(written).read_text())["class_allow_list"]
                atomic_write_json(default, resources, indent=4)
