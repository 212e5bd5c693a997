"""Local training, independent of FLARE: networks, local objectives (strategies) and one train/eval loop.

Typical round at a site::

    device = select_device()
    teacher = frozen_copy(model) if strategy.needs_global_model else None   # after loading w_g into model
    optimizer = make_optimizer(model, lr=round_learning_rate(0.01, 0.99, round_index))
    result = train_local(model, train_loader, strategy, epochs=5, optimizer=optimizer, device=device,
                         teacher=teacher)
    train_accuracy = evaluate(model, train_eval_loader, device=device, num_classes=C).accuracy
"""

from typing import TYPE_CHECKING

# torch and MONAI load lazily, as in fedkper_monai.data: the stdlib checks of a job before FLARE starts import
# training.site_config (SiteConfig), which must not cost the seconds of importing torch.
_LAZY = {
    **dict.fromkeys(("EvalResult", "TrainResult", "evaluate", "frozen_copy", "make_optimizer", "round_learning_rate",
                     "select_device", "train_local"), "fedkper_monai.training.loop"),
    **dict.fromkeys(("NETWORK_NAMES", "ReferenceCNN", "build_network"), "fedkper_monai.training.networks"),
    **dict.fromkeys(("STRATEGY_NAMES", "DittoStrategy", "FedAvgStrategy", "FedKPerStrategy", "FedNTDStrategy",
                     "FedProxStrategy", "LocalOnlyStrategy", "LocalStrategy", "make_strategy"),
                    "fedkper_monai.training.strategies"),
}

if TYPE_CHECKING:  # for type checkers and IDEs: the names as they will resolve
    from fedkper_monai.training.loop import (  # noqa: F401
        EvalResult, TrainResult, evaluate, frozen_copy, make_optimizer, round_learning_rate, select_device, train_local,
    )
    from fedkper_monai.training.networks import NETWORK_NAMES, ReferenceCNN, build_network  # noqa: F401
    from fedkper_monai.training.strategies import (  # noqa: F401
        STRATEGY_NAMES, DittoStrategy, FedAvgStrategy, FedKPerStrategy, FedNTDStrategy, FedProxStrategy,
        LocalOnlyStrategy, LocalStrategy, make_strategy,
    )

__all__ = [
    "NETWORK_NAMES",
    "ReferenceCNN",
    "build_network",
    "STRATEGY_NAMES",
    "LocalStrategy",
    "FedAvgStrategy",
    "FedProxStrategy",
    "FedNTDStrategy",
    "FedKPerStrategy",
    "DittoStrategy",
    "LocalOnlyStrategy",
    "make_strategy",
    "select_device",
    "make_optimizer",
    "round_learning_rate",
    "frozen_copy",
    "TrainResult",
    "train_local",
    "EvalResult",
    "evaluate",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedkper_monai.training' has no attribute {name!r}")
