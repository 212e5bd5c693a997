"""Issue 21, items 1 and 2: no code from any job field, and every refusal before FLARE starts.

Each dict a job passes on (the sites' transform settings, network spec, strategy and task arguments; the
server's evaluator and persistor args) holds only the keys its consumer declares, and plain values. The
same check runs at the site (``SiteConfig.from_mapping``), at the server (``GlobalEvaluator``,
``NetworkPersistor``) and in every launcher (``simulate``, ``export``, ``compare``, ``poc run``, the recipe):
there, a hostile job is refused in well under a second with one line naming the job file and the field,
exit code 2, and nothing (no workspace, no job folder, no FLARE process) is created.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.errors import DataError
from fedkper_monai.flare.jobspec import (
    STANDARD_JOBS,
    JobSettings,
    job_component,
    job_configs,
    load_job,
    save_job_configs,
    site_args,
)
from fedkper_monai.job_fields import EVALUATOR_ARGS, EXECUTOR_ARGS, PERSISTOR_ARGS, TASK_OPTIONS
from fedkper_monai.launch.checks import check_job_fields
from fedkper_monai.training.site_config import SiteConfig

MEDMNIST = "jobs/fedkper_medmnist"
CLIENT = "app/config/config_fed_client.json"
SERVER = "app/config/config_fed_server.json"


@pytest.fixture
def data_root(tmp_path) -> Path:
    """Three site datalists (headers only: a job check comes before any image is opened)."""
    root = tmp_path / "data"
    root.mkdir()
    for k in range(1, 4):
        header = {"num_classes": 5, "class_names": list("abcde"), "spatial_dims": 2, "image_size": [28, 28],
                  "training": [], "test": []}
        (root / f"site-{k}.json").write_text(json.dumps(header))
    return root


def _marker_config(tmp_path: Path) -> tuple[Path, Path]:
    """A JSON file on the site whose ``$`` expression writes a marker when MONAI runs it, and the marker."""
    marker = tmp_path / "written-by-the-job"
    evil = tmp_path / "any_json_on_the_site.json"
    evil.write_text(json.dumps({"run": f"$__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"}))
    return evil, marker


def _learner(edit):
    return lambda meta, server, client: edit(site_args(client))


def _component(component_id, edit):
    return lambda meta, server, client: edit(job_component(server, component_id)["args"])


def _set(key, value):
    return lambda args: args.__setitem__(key, value)


def _network(key, value):
    return lambda args: args["network"].__setitem__(key, value)


# (edit of jobs/fedkper_medmnist, job file, field, what the message says)
HOSTILE = {
    "transform settings key as a MONAI config path": (
        _learner(_set("transform_settings", {"transforms#1#_target_": "monai.bundle.run", "transforms#1#config_file": "x.json"})),
        CLIENT, "transform_settings.transforms#1#_target_",
        "refused: a MONAI config path or code, not a setting of the transform config 'classification_2d'; "
        "valid keys: image_size, channels, intensity_range, augment, spatial_dims"),
    "transform setting the config does not declare": (
        _learner(_set("transform_settings", {"eval_size": [96, 96]})), CLIENT, "transform_settings.eval_size",
        "unknown key, not a setting of the transform config 'classification_2d'"),
    "$ expression in a transform setting": (
        _learner(_set("transform_settings", {"channels": "$__import__('os').system('id')"})), CLIENT,
        "transform_settings.channels", "'$', '%', '@', '#' and '_target_' are code in a MONAI config"),
    "@ reference in a transform setting": (
        _learner(_set("transform_settings", {"intensity_range": "@transforms"})), CLIENT, "transform_settings.intensity_range",
        "is refused"),
    "# path in a transform setting": (
        _learner(_set("transform_settings", {"intensity_range": ["transforms#0", 1]})), CLIENT,
        "transform_settings.intensity_range", "is refused"),
    "dict to instantiate as a transform setting": (
        _learner(_set("transform_settings", {"channels": {"_target_": "os.system", "command": "id"}})), CLIENT,
        "transform_settings.channels", "dict values are refused"),
    "a transforms file instead of a config name": (
        _learner(_set("transforms", "/tmp/evil_transforms.json")), CLIENT, "transforms",
        "refused: a job names a transform config"),
    "unknown network argument": (
        _learner(_network("bundle_root", "/tmp/evil")), CLIENT, "network.bundle_root",
        "unknown key, not an argument of network 'reference_cnn'; valid keys: name, spatial_dims, in_channels, "
        "num_classes, image_size"),
    "_target_ in the network spec": (
        _learner(_network("_target_", "os.system")), CLIENT, "network._target_", "refused: a MONAI config path or code"),
    "num_classes of 'x'": (
        _learner(_network("num_classes", "x")), CLIENT, "network.num_classes", "must be a positive integer, got 'x'"),
    "in_channels of 1.5": (
        _learner(_network("in_channels", 1.5)), CLIENT, "network.in_channels", "must be a positive integer, got 1.5"),
    "image_size of the wrong length": (
        _learner(_network("image_size", [28])), CLIENT, "network.image_size", "must be 2 positive integers"),
    "unknown network name": (
        _learner(_network("name", "vgg16")), CLIENT, "network.name", "unknown network 'vgg16'; valid names: reference_cnn"),
    "features on a classifier": (
        _learner(_network("features", [8, 16])), CLIENT, "network.features", "unknown key"),
    "parameter the strategy does not declare": (
        _learner(_set("algorithm_args", {"tau": 1.0, "lambda_max": 10.0, "mu": 0.1})), CLIENT, "algorithm_args.mu",
        "unknown key, not a parameter of strategy 'fedkper'; valid keys: tau, lambda_max"),
    "code as a strategy parameter": (
        _learner(_set("algorithm_args", {"tau": "$1+1"})), CLIENT, "algorithm_args.tau", "must be a number, got '$1+1'"),
    "unknown strategy": (
        _learner(_set("algorithm", "$exec")), CLIENT, "algorithm", "is refused"),
    "option the task does not take": (
        _learner(_set("task_args", {"supervised_loss": "dice_ce"})), CLIENT, "task_args.supervised_loss",
        "unknown key, not an option of task 'classification'; valid keys: (none)"),
    "code in a site setting": (
        _learner(_set("optimizer", "$__import__('os').system('id')")), CLIENT, "optimizer", "is refused"),
    "code in the executor's own args": (
        _learner(_set("data_root", "%/etc/passwd")), CLIENT, "data_root", "is refused"),
    "unknown evaluator argument": (
        _component("global_evaluator", _set("_target_", "os.system")), SERVER, "_target_",
        "refused: a MONAI config path or code, not an argument of GlobalEvaluator"),
    "MONAI config path in the evaluator's transform settings": (
        _component("global_evaluator", _set("transform_settings", {"preprocessing#_target_": "monai.bundle.run"})), SERVER,
        "transform_settings.preprocessing#_target_", "refused: a MONAI config path or code"),
    "evaluator network num_classes of 'x'": (
        _component("global_evaluator", lambda args: args["network"].__setitem__("num_classes", "x")), SERVER,
        "network.num_classes", "must be a positive integer"),
    "evaluator task option": (
        _component("global_evaluator", _set("task_args", {"sliding_window": {"roi_size": [16, 16]}})), SERVER,
        "task_args.sliding_window", "unknown key, not an option of task 'classification'"),
    "unknown persistor argument": (
        _component("persistor", _set("load_from", "/tmp/x.pt")), SERVER, "load_from",
        "unknown key, not an argument of NetworkPersistor; valid keys: network, seed, save_name"),
    "persistor network with an extra key": (
        _component("persistor", lambda args: args["network"].__setitem__("pretrained", True)), SERVER,
        "network.pretrained", "unknown key"),
    "persistor seed of '$x'": (
        _component("persistor", _set("seed", "$x")), SERVER, "seed", "must be an integer"),
}


def _hostile_job(tmp_path: Path, edit) -> Path:
    meta, server, client = load_job(MEDMNIST)
    # Deep copies: the job's shared network dict is edited in one component only.
    server, client = json.loads(json.dumps(server)), json.loads(json.dumps(client))
    edit(meta, server, client)
    return save_job_configs(tmp_path / "hostile_job", meta, server, client)


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_every_hostile_field_is_refused_naming_the_job_file_and_the_field(case, tmp_path):
    edit, file, field, message = HOSTILE[case]
    job = _hostile_job(tmp_path, edit)
    with pytest.raises(DataError) as caught:
        check_job_fields(job, *load_job(job)[1:])
    assert (caught.value.path, caught.value.field) == (str(job / file), field)
    assert message in caught.value.reason


@pytest.mark.parametrize("case", ["transform settings key as a MONAI config path", "num_classes of 'x'",
                                  "unknown evaluator argument", "persistor seed of '$x'"])
def test_simulate_refuses_a_hostile_job_in_under_a_second_before_flare_starts(case, tmp_path, data_root, capsys):
    edit, file, field, _ = HOSTILE[case]
    job = _hostile_job(tmp_path, edit)
    workspace = tmp_path / "ws"
    started = time.perf_counter()
    code = main(["simulate", str(job), "-w", str(workspace), "-n", "3", "--data-root", str(data_root)])
    seconds = time.perf_counter() - started
    assert code == 2
    assert _one_line(capsys).startswith(f"fedkper-monai simulate: error: {job / file}: {field}: ")
    assert seconds < 1.0
    assert not workspace.exists()


def _launchers(job: Path, data_root: Path, out: Path) -> dict[str, list[str]]:
    return {
        "simulate": ["simulate", str(job), "-w", str(out), "-n", "3", "--data-root", str(data_root)],
        "export": ["export", str(job), "--out", str(out), "--network-from", str(data_root / "site-1.json")],
        "compare": ["compare", "--data-root", str(data_root), "--algorithms", "fedkper,fedavg", "-n", "3",
                    "--base-job", str(job), "--out", str(out)],
        "poc run": ["poc", "run", str(job), "--sites", "3", "--data-root", str(data_root), "--workspace", str(out)],
    }


@pytest.mark.parametrize("launcher", ["simulate", "export", "compare", "poc run"])
def test_each_launcher_refuses_the_monai_config_path_key_at_once_and_creates_nothing(launcher, tmp_path, data_root, capsys):
    evil, marker = _marker_config(tmp_path)
    settings = {"transforms#1#_target_": "monai.bundle.run", "transforms#1#config_file": str(evil)}
    job = _hostile_job(tmp_path, _learner(_set("transform_settings", settings)))
    out = tmp_path / "out"
    started = time.perf_counter()
    code = main(_launchers(job, data_root, out)[launcher])
    seconds = time.perf_counter() - started
    line = _one_line(capsys)
    assert code == 2
    assert line.startswith(f"fedkper-monai {launcher.split()[0]}: error: {job / CLIENT}: transform_settings.transforms#1#_target_: ")
    assert seconds < 1.0
    assert not out.exists() and not marker.exists()


def test_the_refusal_loads_neither_torch_nor_flare(tmp_path, data_root):
    """The whole command, as a user runs it: one line, exit 2, and none of the heavy imports that take seconds."""
    job = _hostile_job(tmp_path, _learner(_network("num_classes", "x")))
    script = ("import sys; from fedkper_monai.cli import main; code = main(sys.argv[1:]); "
              "print(code, sorted(m for m in ('torch', 'monai', 'nvflare') if m in sys.modules))")
    command = [sys.executable, "-c", script, "export", str(job), "--out", str(tmp_path / "out"), "--network-from", str(data_root)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=60)
    seconds = time.perf_counter() - started
    assert done.stdout.strip() == "2 []", done.stderr
    assert done.stderr.strip() == (f"fedkper-monai export: error: {job / CLIENT}: network.num_classes: "
                                   "must be a positive integer, got 'x'")
    assert seconds < 5.0  # interpreter start and the CLI's parsers included; the check itself takes milliseconds


def test_the_recipe_and_the_python_api_refuse_before_flare(tmp_path):
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.recipe import FedKPerRecipe
    from fedkper_monai.launch.simulate import simulate

    job = _hostile_job(tmp_path, _learner(_set("transform_settings", {"transforms#1#_target_": "monai.bundle.run"})))
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        FedKPerRecipe(job=job)
    assert time.perf_counter() - started < 1.0
    assert (caught.value.path, caught.value.field) == (str(job / CLIENT), "transform_settings.transforms#1#_target_")
    hostile = JobSettings(name="hostile", site_settings={"transform_settings": {"channels": "@transforms"}})
    with pytest.raises(DataError, match=r"hostile/app/config/config_fed_client.json: transform_settings.channels: "):
        FedKPerRecipe(settings=hostile)
    workspace = tmp_path / "ws"
    with pytest.raises(DataError, match="transforms#1#_target_"):
        simulate(job, workspace, 3, 3, JobOverrides())
    assert not workspace.exists()


def test_poc_run_names_a_job_that_is_neither_a_folder_nor_an_algorithm(tmp_path, data_root, capsys):
    code = main(["poc", "run", "jobs/no_such_job", "--sites", "3", "--data-root", str(data_root), "--workspace", str(tmp_path / "ws")])
    assert code == 2
    assert _one_line(capsys).startswith("fedkper-monai poc: error: JOB_OR_ALGORITHM: 'jobs/no_such_job' is neither a job folder nor an algorithm")
    assert not (tmp_path / "ws").exists()


def test_every_standard_job_and_every_algorithm_passes():
    for folder in sorted(Path("jobs").iterdir()):
        check_job_fields(folder, *load_job(folder)[1:])
    from fedkper_monai.algorithm_registry import ALGORITHMS

    for settings in [*STANDARD_JOBS.values(), *(JobSettings(name=name, algorithm=name) for name in ALGORITHMS)]:
        check_job_fields(settings.name, *job_configs(settings)[1:])


def test_the_site_and_the_server_refuse_the_same_fields_themselves(retina_network):
    """A job submitted by other means (``nvflare job submit``) meets the same check at each component."""
    from fedkper_monai.flare.evaluator import GlobalEvaluator
    from fedkper_monai.flare.executor import FedKPerExecutor
    from fedkper_monai.flare.persistor import NetworkPersistor

    with pytest.raises(DataError) as caught:
        FedKPerExecutor(network=retina_network, transform_settings={"transforms#1#_target_": "monai.bundle.run"})
    assert (caught.value.path, caught.value.field) == ("site executor args", "transform_settings.transforms#1#_target_")
    with pytest.raises(DataError) as caught:
        FedKPerExecutor(network={**retina_network, "num_classes": "x"})
    assert caught.value.field == "network.num_classes"
    with pytest.raises(DataError) as caught:
        GlobalEvaluator(network=retina_network, transform_settings={"spatial_dims": "$2"})
    assert (caught.value.path, caught.value.field) == ("global evaluator args", "transform_settings.spatial_dims")
    with pytest.raises(DataError) as caught:
        NetworkPersistor(network={**retina_network, "num_classes": "x"})
    assert (caught.value.path, caught.value.field) == ("persistor args", "network.num_classes")
    with pytest.raises(DataError) as caught:
        NetworkPersistor(network={**retina_network, "conv_channels": [1, 2]})
    assert caught.value.field == "network.conv_channels"


def test_build_network_names_a_bad_argument_instead_of_a_type_error():
    from fedkper_monai.training import build_network

    for kwargs, field in [({"num_classes": "x"}, "num_classes"), ({"in_channels": 0}, "in_channels"),
                          ({"spatial_dims": "2"}, "spatial_dims"), ({"image_size": ["28", "28"]}, "image_size")]:
        spec = {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, **kwargs}
        with pytest.raises(DataError) as caught:
            build_network("reference_cnn", **spec)
        assert (caught.value.path, caught.value.field) == ("network spec", field)


def _parameters(function) -> list[str]:
    """A constructor's named arguments (none for a class that keeps ``object.__init__``)."""
    if function is object.__init__:
        return []
    return [name for name in inspect.signature(function).parameters if name not in ("self", "settings")]


def test_the_allow_lists_are_the_components_own_arguments():
    """The stdlib tables the checks read (no torch, no FLARE) are exactly what each consumer takes."""
    from fedkper_monai.flare.evaluator import GlobalEvaluator
    from fedkper_monai.flare.executor import FedKPerExecutor
    from fedkper_monai.flare.persistor import NetworkPersistor
    from fedkper_monai.training.segmentation import SegmentationTask
    from fedkper_monai.training.tasks import ClassificationTask

    assert _parameters(GlobalEvaluator.__init__) == list(EVALUATOR_ARGS)
    assert _parameters(NetworkPersistor.__init__) == list(PERSISTOR_ARGS)
    assert _parameters(FedKPerExecutor.__init__) == list(EXECUTOR_ARGS)
    assert not set(EXECUTOR_ARGS) & set(SiteConfig.__dataclass_fields__)
    assert list(TASK_OPTIONS["classification"]) == _parameters(ClassificationTask.__init__) == []
    assert list(TASK_OPTIONS["segmentation"]) == _parameters(SegmentationTask.__init__)


def test_the_network_table_is_build_networks_own():
    from fedkper_monai.job_fields import NETWORKS
    from fedkper_monai.training import networks

    assert set(NETWORKS) == {*networks.NETWORK_NAMES, "bundle"}
    assert {name for name, extra in NETWORKS.items() if "features" in extra} == set(networks._SEGMENTATION_NETWORKS)
    assert _parameters(networks.build_network) == ["name", "spatial_dims", "in_channels", "num_classes", "image_size", "features"]
