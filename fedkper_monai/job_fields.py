"""What a job may set in the dicts it passes on, checked the same way at the site, at the server and before
FLARE starts (standard library only: the checks before a launch take milliseconds).

A job file comes from whoever submits the job. Its component args reach MONAI's ``ConfigParser`` (transform
settings: a key such as ``"transforms#1#_target_"`` would rewrite the pipeline), torch constructors (the
network spec) and this package's classes. So every dict a job passes on has an explicit allow-list of keys,
the names its consumer declares (a transform config's own top-level settings, ``build_network``'s
arguments per network, a strategy's parameters, a task's options, the server components' arguments), and
every value is plain data: null, booleans, numbers, strings without ``$``, ``%``, ``@``, ``#`` or
``_target_``, and lists of these. A refusal is one :class:`~fedkper_monai.errors.DataError` naming the file
(``source``) and the field (the key's path, e.g. ``transform_settings.transforms#1#_target_``).

Used by :meth:`fedkper_monai.training.site_config.SiteConfig.from_mapping` (each site),
:class:`~fedkper_monai.flare.evaluator.GlobalEvaluator` and :class:`~fedkper_monai.flare.persistor.NetworkPersistor`
(the server), :func:`fedkper_monai.launch.checks.check_job_fields` (``simulate``, ``export``, ``compare``,
``poc run``, the recipe) and :func:`fedkper_monai.data.build_transforms`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

from fedkper_monai.algorithm_registry import ALGORITHMS, strategy_defaults
from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.transform_configs import CODE_MARKERS, declared_settings, is_plain, resolve_transforms_config

__all__ = [
    "EVALUATOR_ARGS",
    "EXECUTOR_ARGS",
    "NETWORK_KEYS",
    "NETWORKS",
    "PERSISTOR_ARGS",
    "SLIDING_WINDOW_KEYS",
    "TASK_OPTIONS",
    "check_algorithm_args",
    "check_evaluator_args",
    "check_keys",
    "check_network",
    "check_persistor_args",
    "check_plain",
    "check_site_settings",
    "check_task_args",
    "check_transform_settings",
    "check_transforms_name",
]

#: A dict's allowed keys: ``None`` for a plain value, a nested schema for a dict of its own.
Schema = Mapping[str, Union["Schema", None]]

#: What every network spec holds (``build_network``'s arguments).
NETWORK_KEYS = ("name", "spatial_dims", "in_channels", "num_classes", "image_size")
#: Every network ``build_network`` builds, with the spec keys it takes beyond :data:`NETWORK_KEYS`
#: (``bundle``: this participant's own MONAI bundle). tests/launch/test_job_checks.py keeps it equal to
#: ``NETWORK_NAMES`` and the builders.
NETWORKS: Mapping[str, tuple[str, ...]] = {
    "reference_cnn": (),
    **{name: () for name in ("densenet121", "densenet169", "densenet201", "resnet10", "resnet18", "resnet34", "resnet50")},
    "efficientnet-b0": (),
    "unet": ("features",),
    "segresnet": ("features",),
    "bundle": (),
}
#: The options of segmentation's ``sliding_window`` (``training/segmentation.py`` reads them from here).
SLIDING_WINDOW_KEYS = ("roi_size", "sw_batch_size", "overlap", "mode")
#: Each task's options (``make_task``'s keyword arguments); tests/launch/test_job_checks.py keeps them equal.
TASK_OPTIONS: Mapping[str, Schema] = {
    "classification": {},
    "segmentation": {"supervised_loss": None, "sliding_window": dict.fromkeys(SLIDING_WINDOW_KEYS)},
}
#: The site executor's own arguments; the rest of its args are ``SiteConfig`` fields.
EXECUTOR_ARGS = ("data_root", "demo", "analytic_sender_id", "train_task", "validate_task")
#: ``GlobalEvaluator``'s and ``NetworkPersistor``'s arguments (the server's components a job configures).
EVALUATOR_ARGS = ("network", "data_root", "demo", "datalist", "transforms", "transform_settings", "batch_size",
                  "device", "cache", "task", "task_args")
PERSISTOR_ARGS = ("network", "seed", "save_name")

_PLAIN = "a job sets plain values only (null, booleans, numbers, strings, lists of them)"


def _path(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def check_plain(value: Any, *, source: str | os.PathLike, field: str) -> None:
    """``value`` must be plain: null, a boolean, a number, a string without code markers, or a list of these.

    Raises:
        DataError: naming ``source`` and ``field``.
    """
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, source=source, field=field)
    elif isinstance(value, str):
        if not is_plain(value):
            raise DataError(source, f"{value!r} is refused: '$', '%', '@', '#' and '_target_' are code in a MONAI "
                                    f"config; {_PLAIN}", field=field)
    elif not is_plain(value):
        raise DataError(source, f"{type(value).__name__} values are refused; {_PLAIN}", field=field)


def _mapping(values: Any, *, source: str | os.PathLike, field: str) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise DataError(source, f"must be a JSON object of settings, got {type(values).__name__}", field=field or None)
    return values


def check_keys(values: Any, allowed: Sequence[str], *, source: str | os.PathLike, field: str, what: str) -> Mapping[str, Any]:
    """``values`` must be a mapping whose keys are all in ``allowed`` (``what`` says whose they are).

    Returns ``values``. Raises :class:`DataError` naming the first other key and listing the valid ones.
    """
    values = _mapping(values, source=source, field=field)
    for key in values:
        if key not in allowed:
            code = isinstance(key, str) and any(marker in key for marker in CODE_MARKERS)
            why = "refused: a MONAI config path or code" if code else "unknown key"
            raise DataError(source, f"{why}, not {what}; valid keys: {', '.join(allowed) or '(none)'}", field=_path(field, str(key)))
    return values


def _check_schema(values: Any, schema: Schema, *, source: str | os.PathLike, field: str, what: str) -> None:
    for key, value in check_keys(values, tuple(schema), source=source, field=field, what=what).items():
        nested = schema[key]
        if nested is None:
            check_plain(value, source=source, field=_path(field, key))
        else:
            _check_schema(value, nested, source=source, field=_path(field, key), what=f"an option of {key}")


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_integers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(_integer(v) and v >= 1 for v in value)


def check_network(spec: Any, *, source: str | os.PathLike, field: str = "network") -> None:
    """A network spec: a known ``name``, only the arguments that network takes, each of its type.

    ``spatial_dims`` 2 or 3, ``in_channels`` and ``num_classes`` positive integers (required), ``image_size``
    null or one positive integer per spatial dimension, ``features`` (segmentation networks) positive integers.

    Raises:
        DataError: naming ``source`` and the argument (``network.num_classes``, ...).
    """
    spec = _mapping(spec, source=source, field=field)
    name = spec.get("name")
    if not isinstance(name, str) or name not in NETWORKS:
        raise DataError(source, f"unknown network {name!r}; valid names: {', '.join(NETWORKS)}", field=_path(field, "name"))
    check_keys(spec, NETWORK_KEYS + NETWORKS[name], source=source, field=field, what=f"an argument of network {name!r}")
    for key in ("spatial_dims", "in_channels", "num_classes"):
        if key not in spec:
            raise DataError(source, f"missing: network {name!r} needs {key}", field=_path(field, key))
        if not _integer(spec[key]) or spec[key] < 1:
            raise DataError(source, f"must be a positive integer, got {spec[key]!r}", field=_path(field, key))
    dims = spec["spatial_dims"]
    if dims not in (2, 3):
        raise DataError(source, f"must be 2 or 3, got {dims!r}", field=_path(field, "spatial_dims"))
    size = spec.get("image_size")
    if size is not None and (not _positive_integers(size) or len(size) != dims):
        raise DataError(source, f"must be {dims} positive integers (one per spatial dimension) or null, got {size!r}",
                        field=_path(field, "image_size"))
    features = spec.get("features")
    if features is not None and not _positive_integers(features):
        raise DataError(source, f"must be a list of positive integers (channels per level) or null, got {features!r}",
                        field=_path(field, "features"))


def _strategy_names() -> list[str]:
    return list(dict.fromkeys(algorithm.strategy for algorithm in ALGORITHMS.values()))


def check_algorithm_args(strategy: Any, args: Any, *, source: str | os.PathLike, field: str = "algorithm_args") -> None:
    """``args`` holds only parameters the local strategy declares (the registry's), each a number.

    Raises:
        DataError: an unknown strategy (field ``algorithm``), parameter, or a value that is not a number.
    """
    try:
        declared = tuple(strategy_defaults(strategy)) if isinstance(strategy, str) else None
    except ValueError:
        declared = None
    if declared is None:
        raise DataError(source, f"unknown local strategy {strategy!r}; valid names: {', '.join(_strategy_names())}",
                        field="algorithm")
    for key, value in check_keys(args, declared, source=source, field=field, what=f"a parameter of strategy {strategy!r}").items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise DataError(source, f"must be a number, got {value!r}", field=_path(field, key))


def check_task_args(task: Any, args: Any, *, source: str | os.PathLike, field: str = "task_args") -> None:
    """``args`` holds only options the task takes (:data:`TASK_OPTIONS`), each plain.

    Raises:
        DataError: an unknown task (field ``task``) or option, or a value that is code.
    """
    if not isinstance(task, str) or task not in TASK_OPTIONS:
        raise DataError(source, f"unknown task {task!r}; valid names: {', '.join(TASK_OPTIONS)}", field="task")
    _check_schema(args, TASK_OPTIONS[task], source=source, field=field, what=f"an option of task {task!r}")


def check_transforms_name(config: str | os.PathLike, *, source: str | os.PathLike) -> str | os.PathLike:
    """The transform config a job names must be found in the trusted folders (a path elsewhere, or a file the
    job ships, is refused); returns ``config``.

    Raises:
        DataError: naming ``source`` and the field ``transforms``.
    """
    try:
        resolve_transforms_config(config)
    except FedKPerError as error:  # it names the value; the file to edit is ``source``
        raise DataError(source, str(error), field="transforms") from None
    return config


def check_transform_settings(settings: Any, config: str | os.PathLike, *, source: str | os.PathLike,
                             field: str = "transform_settings") -> None:
    """``settings`` sets only what the transform config ``config`` declares (its own top-level plain
    settings, :func:`~fedkper_monai.transform_configs.declared_settings`), each to a plain value.

    The config is looked up (in the trusted folders only) when there is a setting to check.

    Raises:
        DataError: naming ``source`` and the key (e.g. ``transform_settings.transforms#1#_target_``), with
            the valid keys; or the config cannot be found or read.
    """
    settings = _mapping(settings, source=source, field=field)
    if not settings:
        return
    names = declared_settings(check_transforms_name(config, source=source))
    what = f"a setting of the transform config {os.fspath(config)!r}"
    for key, value in check_keys(settings, names, source=source, field=field, what=what).items():
        check_plain(value, source=source, field=_path(field, key))


def _check_plain_args(values: Mapping[str, Any], nested: Sequence[str], *, source: str | os.PathLike) -> None:
    for key, value in values.items():
        if key not in nested:
            check_plain(value, source=source, field=key)


def check_site_settings(values: Mapping[str, Any], *, algorithm: str, task: str, transforms: str,
                        source: str | os.PathLike) -> None:
    """A site's settings (``SiteConfig`` fields whose names were checked already): every value plain, the
    network spec, the strategy's and the task's arguments and the transform settings as their consumers declare.

    ``algorithm``, ``task`` and ``transforms`` are the values in effect (the job's, else the defaults).
    """
    _check_plain_args(values, ("network", "algorithm_args", "task_args", "transform_settings"), source=source)
    if "network" not in values:
        raise DataError(source, "missing: the job's network spec (name, spatial_dims, in_channels, num_classes)",
                        field="network")
    check_network(values["network"], source=source)
    check_algorithm_args(algorithm, values.get("algorithm_args", {}), source=source)
    check_task_args(task, values.get("task_args", {}), source=source)
    check_transform_settings(values.get("transform_settings", {}), transforms, source=source)


def _check_server_component(args: Mapping[str, Any], *, source: str | os.PathLike) -> None:
    """The args of a server component that evaluates or builds the network: as a site's (defaults as theirs)."""
    _check_plain_args(args, ("network", "task_args", "transform_settings"), source=source)
    if "network" not in args:
        raise DataError(source, "missing: the job's network spec (name, spatial_dims, in_channels, num_classes)",
                        field="network")
    check_network(args["network"], source=source)
    if "task_args" in args or "task" in args:
        check_task_args(args.get("task", "classification"), args.get("task_args") or {}, source=source)
    if args.get("transform_settings"):
        check_transform_settings(args["transform_settings"], args.get("transforms", "classification_2d"), source=source)


def check_evaluator_args(args: Any, *, source: str | os.PathLike) -> None:
    """The server's ``GlobalEvaluator`` args: its own arguments only, each checked as the sites check theirs."""
    _check_server_component(check_keys(args, EVALUATOR_ARGS, source=source, field="", what="an argument of GlobalEvaluator"),
                            source=source)


def check_persistor_args(args: Any, *, source: str | os.PathLike) -> None:
    """The server's ``NetworkPersistor`` args: ``network`` (checked as the sites check it), ``seed``, ``save_name``."""
    args = check_keys(args, PERSISTOR_ARGS, source=source, field="", what="an argument of NetworkPersistor")
    if "seed" in args and not _integer(args["seed"]):
        raise DataError(source, f"must be an integer, got {args['seed']!r}", field="seed")
    _check_server_component(args, source=source)
