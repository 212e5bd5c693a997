"""Sites and server of other fedkper-monai or FLARE versions refuse each other, naming both versions.

The site's refusal of a task is in ``test_executor.py``; a site of another version in a real federation is in
``tests/system/test_lab.py``.
"""

from __future__ import annotations

import nvflare
from nvflare.app_common.abstract.fl_model import FLModel

import fedkper_monai
from fedkper_monai.flare.controller import FedKPerController
from fedkper_monai.flare.messages import VERSIONS_KEY, software_versions, version_mismatch


def test_the_versions_are_the_installed_ones():
    assert software_versions() == {"fedkper-monai": fedkper_monai.__version__, "nvflare": nvflare.__version__}


def test_a_mismatch_names_both_sides_and_a_peer_naming_none_is_not_judged():
    ours = software_versions()
    assert version_mismatch(ours, "the server", "site-1") is None
    assert version_mismatch(None, "the server", "site-1") is None and version_mismatch("2.9", "x", "y") is None
    line = version_mismatch({"fedkper-monai": ours["fedkper-monai"], "nvflare": "2.8.1"}, "the server", "site-1")
    assert line == (f"site-1 runs fedkper-monai {ours['fedkper-monai']} and nvflare {ours['nvflare']}, the server "
                    f"fedkper-monai {ours['fedkper-monai']} and nvflare 2.8.1: install the same versions on both")
    # A peer's value is shown cut short, never as it came.
    assert "x" * 41 not in version_mismatch({"nvflare": "x" * 500}, "the server", "site-1")


def test_the_server_refuses_an_update_of_other_versions_and_records_why():
    controller = FedKPerController()
    controller.failures.start_round()
    ours = software_versions()
    assert not controller._refused_versions("site-1", FLModel(params={}, meta={VERSIONS_KEY: ours}))
    assert controller._refused_versions("site-2", FLModel(params={}, meta={VERSIONS_KEY: {**ours, "fedkper-monai": "0.0.9"}}))
    failed = controller.failures.close_round(["site-1", "site-2"], [], {"site-1": {}}, {})
    assert failed["train"] == {"site-2": f"refused by the server: the server runs fedkper-monai {ours['fedkper-monai']} and "
                                         f"nvflare {ours['nvflare']}, site-2 fedkper-monai 0.0.9 and nvflare {ours['nvflare']}: "
                                         "install the same versions on both"}
