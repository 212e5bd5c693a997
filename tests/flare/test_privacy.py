"""A site operator's protections of what leaves the site (``fedkper-monai site-config``), applied by FLARE.

FLARE applies a site's ``local/privacy.json`` filters in a real client (provisioned or POC): its client run
manager puts the job's scope object into the context and the client runner filters every result with it.
Here the same pieces run in the same order: FLARE's own privacy configurer reads the file site-config wrote,
the executor answers a real train task with that scope in its context, and FLARE's ``apply_filters`` runs
the scope's filters on the real reply. The simulator sets no scope (``SimulatorClientRunManager``), which
``test_the_simulator_applies_no_site_scope`` pins so the docs stay true.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.apis.utils.task_utils import apply_filters
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.private.fed.app.fl_conf import create_privacy_manager
from nvflare.private.privacy_manager import Scope

from fedkper_monai.cli import main
from fedkper_monai.errors import DataError
from fedkper_monai.flare.executor import FedKPerExecutor
from fedkper_monai.flare.local_choices import read_site_config, write_site_config
from fedkper_monai.flare.local_privacy import FILTER_CLASSES, SCOPE_NAME, SitePrivacy
from fedkper_monai.flare.messages import GLOBAL_VERSION_KEY, SITE_METRICS_KEY, round_shared
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network


def _site_dir(tmp_path):
    folder = tmp_path / "hospital-a"
    (folder / "startup").mkdir(parents=True)
    return folder


def _global(network: dict, version: int = 1) -> FLModel:
    torch.manual_seed(0)
    params = to_numpy(build_network(**network).state_dict())
    return FLModel(params_type=ParamsType.FULL, params=params, current_round=0, meta={GLOBAL_VERSION_KEY: version})


def _flare_context(site_dir) -> FLContext:
    """The context FLARE's client run manager makes for a job without ``scope`` in its meta."""
    manager = create_privacy_manager(Workspace(str(site_dir), "site-1"), names_only=False)
    context = FLContext()
    context.set_prop(FLContextKey.SCOPE_OBJECT, manager.get_scope(""), private=True, sticky=False)
    return context


def _train(site_dir, data_root, network, context: FLContext):
    executor = FedKPerExecutor(data_root=str(data_root), network=network, local_epochs=1, batch_size=32, device="cpu", amp=False)
    executor.setup("site-1", site_dir / "job", site_dir / "local")
    model = _global(network)
    reply = executor.execute("train", FLModelUtils.to_shareable(model), context, Signal())
    assert reply.get_return_code() in (None, ReturnCode.OK)
    return executor, model, reply


def test_site_config_writes_flares_privacy_policy_with_exact_filter_classes(tmp_path, retina_federation):
    site_dir = _site_dir(tmp_path)
    assert main(["site-config", str(site_dir), "--data-root", str(retina_federation), "--score-epsilon", "2",
                 "--share-decimals", "2", "--exclude-vars", "classifier.bias", "--percentile-privacy", "90"]) == 0
    assert read_site_config(site_dir / "local") == {"data_root": str(retina_federation.resolve()), "datalist": None, "device": None,
                                                    "score_epsilon": 2.0, "share_decimals": 2, "send_diff": True}
    policy = json.loads((site_dir / "local" / "privacy.json").read_text())
    assert policy["default_scope"] == SCOPE_NAME
    assert [f["path"] for f in policy["scopes"][0]["task_result_filters"]] == list(FILTER_CLASSES.values())
    # FLARE's own configurer builds them; both classes are on FLARE's default allow-list, which `allow` keeps.
    scope = create_privacy_manager(Workspace(str(site_dir), "site-1"), names_only=False).get_scope("")
    assert [type(f).__name__ for f in scope.task_result_filters[FilterKey.OUT]] == ["ExcludeVars", "PercentilePrivacy"]
    from fedkper_monai.flare.workspace import allow_components

    allowed = json.loads(allow_components(site_dir).read_text())["class_allow_list"]
    assert set(FILTER_CLASSES.values()) <= set(allowed)
    # Written again without filters: the policy is gone, the job's results go out unfiltered.
    assert main(["site-config", str(site_dir), "--data-root", str(retina_federation)]) == 0
    assert not (site_dir / "local" / "privacy.json").exists() and "send_diff" not in read_site_config(site_dir / "local")


@pytest.mark.parametrize("option, value, field", [("--score-epsilon", "0", "score_epsilon"), ("--score-epsilon", "nan", "score_epsilon"),
                                                   ("--share-decimals", "9", "share_decimals"), ("--percentile-privacy", "101", "percentile")])
def test_bad_privacy_options_are_refused_by_name(tmp_path, retina_federation, capsys, option, value, field):
    site_dir = _site_dir(tmp_path)
    assert main(["site-config", str(site_dir), "--data-root", str(retina_federation), option, value]) == 2
    assert field in capsys.readouterr().err and not (site_dir / "local").exists()


def test_a_site_policy_of_its_own_is_not_overwritten(tmp_path, retina_federation):
    site_dir = _site_dir(tmp_path)
    (site_dir / "local").mkdir()
    own = {"scopes": [{"name": "public", "task_result_filters": []}], "default_scope": "public"}
    (site_dir / "local" / "privacy.json").write_text(json.dumps(own))
    with pytest.raises(DataError, match="privacy.json.*'public'"):
        write_site_config(site_dir, retina_federation, privacy=SitePrivacy(exclude_vars=("classifier.bias",)))
    assert json.loads((site_dir / "local" / "privacy.json").read_text()) == own


def test_a_hand_edited_site_file_with_bad_privacy_values_is_refused(tmp_path):
    (tmp_path / "fedkper_site.json").write_text(json.dumps({"share_decimals": "2"}))
    with pytest.raises(DataError, match="share_decimals"):
        read_site_config(tmp_path)
    (tmp_path / "fedkper_site.json").write_text(json.dumps({"score_epsilon": -1}))
    with pytest.raises(DataError, match="score_epsilon"):
        read_site_config(tmp_path)


def test_flares_filters_from_site_config_change_what_the_site_sends(tmp_path, retina_federation, retina_network):
    site_dir = _site_dir(tmp_path)
    write_site_config(site_dir, retina_federation, device="cpu",
                      privacy=SitePrivacy(exclude_vars=("classifier.bias",), percentile=50, gamma=0.005))
    context = _flare_context(site_dir)
    executor, model, reply = _train(site_dir, retina_federation, retina_network, context)
    before = FLModelUtils.from_shareable(reply)
    # The executor sends a difference (FLARE's filters act on one), exact before the filters run.
    assert before.params_type == ParamsType.DIFF and set(before.params) == set(model.params)
    trained = to_numpy(executor.site.model.state_dict())
    for key in model.params:
        np.testing.assert_allclose(model.params[key] + before.params[key], trained[key], rtol=0, atol=1e-6)
    exact_bias_change = before.params["classifier.bias"].copy()
    exact = np.concatenate([value.ravel() for value in before.params.values() if value.ndim > 0])
    assert float(np.mean(exact == 0)) < 0.01 and float(np.abs(exact).max()) > 0.005
    sent = FLModelUtils.from_shareable(apply_filters(Scope.TASK_RESULT_FILTERS_NAME, reply, context, {}, "train", FilterKey.OUT))
    assert sent.params_type == ParamsType.DIFF
    assert "classifier.bias" not in sent.params, "ExcludeVars left the bias change (which ranks with the class histogram) out"
    assert exact_bias_change.any()
    changes = np.concatenate([value.ravel() for key, value in sent.params.items() if value.ndim > 0])
    assert float(np.mean(changes == 0)) >= 0.49, "PercentilePrivacy zeroed the smaller half of the changes"
    assert float(np.abs(changes).max()) <= 0.005 + 1e-9, "and clipped the rest to gamma"


def test_without_a_site_policy_the_site_sends_its_full_model(tmp_path, retina_federation, retina_network):
    site_dir = _site_dir(tmp_path)
    write_site_config(site_dir, retina_federation, device="cpu")
    _, model, reply = _train(site_dir, retina_federation, retina_network, _flare_context(site_dir))
    sent = FLModelUtils.from_shareable(apply_filters(Scope.TASK_RESULT_FILTERS_NAME, reply, FLContext(), {}, "train", FilterKey.OUT))
    assert sent.params_type == ParamsType.FULL and set(sent.params) == set(model.params)


def test_share_decimals_rounds_every_rate_the_site_sends(tmp_path, retina_federation, retina_network):
    site_dir = _site_dir(tmp_path)
    write_site_config(site_dir, retina_federation, device="cpu", privacy=SitePrivacy(share_decimals=2))
    executor, _, reply = _train(site_dir, retina_federation, retina_network, FLContext())
    sent = FLModelUtils.from_shareable(reply)
    figures = {**sent.meta[SITE_METRICS_KEY], **{f"initial {k}": v for k, v in sent.metrics.items()}}
    rates = {key: value for key, value in figures.items() if key.endswith("_acc") or "nfr_" in key}
    assert len(rates) >= 7
    assert all(value == round(value, 2) for value in rates.values()), rates
    # The exact accuracy of the trained model on the local test split is no two-decimal number; the sent one is.
    exact = executor.site._evaluate(executor.site.model, executor.site.test_loader).accuracy
    assert exact != round(exact, 2) and sent.meta[SITE_METRICS_KEY]["personalized_acc"] == round(exact, 2)
    validated = executor.execute("validate", FLModelUtils.to_shareable(_global(retina_network, version=2)), FLContext(), Signal())
    assert all(v == round(v, 2) for k, v in FLModelUtils.from_shareable(validated).metrics.items() if k.endswith("_acc") or "nfr_" in k)
    # Counts, sizes and the score are not rates: unchanged.
    assert sent.meta[SITE_METRICS_KEY]["local_test_size"] == executor.site.local_test_size
    assert round_shared({"num_samples": 203, "train_seconds": 1.23456}, 2) == {"num_samples": 203, "train_seconds": 1.23456}


def test_the_site_operators_score_epsilon_noises_the_score_and_the_stronger_epsilon_wins(tmp_path, retina_federation, retina_network):
    site_dir = _site_dir(tmp_path)
    write_site_config(site_dir, retina_federation, device="cpu", privacy=SitePrivacy(score_epsilon=0.5))
    executor = FedKPerExecutor(data_root=str(retina_federation), network=retina_network, score_epsilon=5.0)
    executor.setup("site-1", tmp_path / "job", site_dir / "local")
    assert executor.site.config.score_epsilon == 0.5
    stronger_job = FedKPerExecutor(data_root=str(retina_federation), network=retina_network, score_epsilon=0.1)
    stronger_job.setup("site-1", tmp_path / "job2", site_dir / "local")
    assert stronger_job.site.config.score_epsilon == 0.1
    _, _, reply = _train(site_dir, retina_federation, retina_network, FLContext())
    _, _, exact_reply = _train(_site_without_noise(tmp_path, retina_federation), retina_federation, retina_network, FLContext())
    noisy, exact = (FLModelUtils.from_shareable(r).meta["score"] for r in (reply, exact_reply))
    assert noisy != exact and 0.0 <= noisy <= 1.0


def _site_without_noise(tmp_path, data_root):
    folder = tmp_path / "hospital-b"
    (folder / "startup").mkdir(parents=True)
    write_site_config(folder, data_root, device="cpu")
    return folder


def test_the_simulator_applies_no_site_scope():
    """Pins FLARE 2.9: the simulator's client run manager builds no scope object, so site filters never run there."""
    import inspect

    from nvflare.private.fed.simulator.simulator_app_runner import SimulatorClientRunManager

    props = SimulatorClientRunManager.create_job_processing_context_properties(None, _JobMetaWorkspace(), "job")
    assert FLContextKey.SCOPE_OBJECT not in props, inspect.getsource(SimulatorClientRunManager)


class _JobMetaWorkspace:
    """Just enough of FLARE's workspace for ``get_job_meta_from_workspace``."""

    def get_job_meta_path(self, job_id):
        import tempfile
        from pathlib import Path

        path = Path(tempfile.mkdtemp()) / "meta.json"
        path.write_text("{}")
        return str(path)


def _initial_global(job_folder) -> dict:
    """The persistor's initial model of an exported job (its network spec and seed, as the server builds it)."""
    from fedkper_monai.flare.jobspec import PERSISTOR
    from fedkper_monai.flare.persistor import NetworkPersistor

    for config in job_folder.rglob("config_fed_server.json"):
        for component in json.loads(config.read_text()).get("components", []):
            if component.get("path") == PERSISTOR:
                return NetworkPersistor(**component.get("args", {})).initial_state()
    raise AssertionError(f"no {PERSISTOR} in {job_folder}")


@pytest.mark.slow
def test_a_site_filter_set_in_site_config_changes_what_a_real_flare_client_sends(retina_federation, tmp_path, retina_network):
    """POC: every site's privacy.json leaves classifier.bias out; the server aggregates DIFFs without it.

    Needs the aggregator's DIFF support (full = global + diff, a key absent from a DIFF: no change); without
    it the server drops every update (``params_type DIFF``), which this test reports.
    """
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.poc import PocRun, poc_run

    workspace = tmp_path / "poc_ws"
    run = PocRun(job="fedkper", sites=3, data_root=retina_federation, workspace=workspace, timeout=400,
                 overrides=JobOverrides(rounds=2, sample_fraction=1.0, local_epochs=1),
                 privacy=SitePrivacy(exclude_vars=("classifier.bias",)))
    code = poc_run(run)
    policies = sorted(workspace.glob("poc/*/prod_*/site-*/local/privacy.json"))
    assert len(policies) == 3
    lines = [json.loads(line) for line in (workspace / "result" / "workspace" / "metrics.jsonl").read_text().splitlines()]
    rounds = [line for line in lines if "round" in line and "site" not in line]
    assert code == 0 and rounds, lines[-3:]
    assert all(not line["dropped_sites"] for line in rounds), [line["dropped_sites"] for line in rounds]
    final = torch.load(workspace / "result" / "workspace" / "global_model.pt", map_location="cpu", weights_only=True)
    initial = _initial_global(workspace / "job")
    # No site sent the bias change, so the aggregate left the bias as it was; the rest learned.
    assert torch.equal(final["classifier.bias"], initial["classifier.bias"])
    assert not torch.equal(final["classifier.weight"], initial["classifier.weight"])
