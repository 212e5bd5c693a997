"""Local objectives as small strategies that share one training loop (:func:`fedkper_monai.training.train_local`).

A strategy holds a local objective's configuration and per-round state; the loop owns batching, devices,
AMP and the optimizer. Each round the loop calls, in this order::

    strategy.begin_round(model, global_model)        # reset diagnostics, snapshot what the round needs
    for each batch: loss = strategy.loss(logits, targets, teacher_logits, model)
    strategy.stats()                                 # means of per-batch diagnostics (beta, kl, ce, ...)

Flags tell the caller what a strategy needs:

- ``uses_teacher``: the loss needs the frozen received global model's logits for each batch.
- ``needs_global_model``: the frozen received global model must be passed to the loop (implied by
  ``uses_teacher``; FedProx can also snapshot the model itself, which equals the global model at round start).
- ``federated``: the site starts each round from the received global weights. ``False`` (Local-only): the
  site keeps training its own model and ignores them.
- ``personal_model``: the site keeps a personalized model across rounds, trained with this strategy, and
  uploads a separate copy of the received model trained with plain cross-entropy (Ditto).

The parameters' defaults and the site-model flags (``federated``, ``personal_model``) are facts of the
algorithm registry (:mod:`fedkper_monai.algorithm_registry`): the entry named after a strategy holds them.

To add an objective: subclass :class:`LocalStrategy`, set ``name`` and the teacher flags, implement
:meth:`loss` (call :meth:`_record` for diagnostics), register the class in ``_STRATEGIES`` and add its line
to the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedkper_monai.algorithm import KnowledgePersonalizationLoss, NotTrueDistillationLoss, proximal_term
from fedkper_monai.algorithm_registry import get_algorithm, strategy_defaults

__all__ = [
    "LocalStrategy",
    "FedAvgStrategy",
    "FedProxStrategy",
    "FedNTDStrategy",
    "FedKPerStrategy",
    "DittoStrategy",
    "LocalOnlyStrategy",
    "STRATEGY_NAMES",
    "make_strategy",
]


class LocalStrategy:
    """Base of the local objectives: per-round state, the per-batch loss and diagnostics.

    Subclasses set ``name`` (the key used by :func:`make_strategy`) and ``uses_teacher`` and implement
    :meth:`loss`; ``federated`` and ``personal_model`` follow the registry entry called ``name``.
    """

    name: ClassVar[str] = "base"
    uses_teacher: ClassVar[bool] = False
    needs_global_model: ClassVar[bool] = False
    federated: ClassVar[bool] = True
    personal_model: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        site_model = get_algorithm(cls.name).site_model
        cls.federated = site_model != "own"
        cls.personal_model = site_model == "personal"

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._supervised: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy

    def set_supervised(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> None:
        """The supervised term ``criterion(logits, targets)`` in place of cross-entropy (a segmentation task's
        Dice + CE, docs/design.md, Dense FedKPer); ``None`` restores cross-entropy."""
        self._supervised = criterion if criterion is not None else F.cross_entropy

    def begin_round(self, model: nn.Module, global_model: nn.Module | None) -> None:
        """Start a round: forget the diagnostics of the previous one.

        Args:
            model: the model about to be trained (holds the received global weights at this point).
            global_model: frozen copy of the received global model, or ``None`` when the strategy does not
                need it.
        """
        self._sums.clear()
        self._counts.clear()

    def loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        model: nn.Module,
    ) -> torch.Tensor:
        """The scalar loss of one batch.

        Args:
            logits: student logits ``(N, C)``.
            targets: class indices ``(N,)``, int64.
            teacher_logits: frozen global-model logits ``(N, C)`` when ``uses_teacher``, else ``None``.
            model: the model being trained (for parameter-space terms such as FedProx's).
        """
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Means of the per-batch diagnostics recorded since :meth:`begin_round` (empty when none)."""
        return {key: self._sums[key] / self._counts[key] for key in self._sums}

    def _record(self, **values: float) -> None:
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict[str, float]:
        """The constructor parameters, e.g. ``{"mu": 0.01}`` (for logs and metrics)."""
        return {key: getattr(self, key) for key in inspect.signature(type(self).__init__).parameters if key != "self"}


class FedAvgStrategy(LocalStrategy):
    """FedAvg's local objective: cross-entropy."""

    name: ClassVar[str] = "fedavg"

    def loss(self, logits, targets, teacher_logits, model):
        ce = self._supervised(logits, targets)
        self._record(ce=ce.item())
        return ce


_FEDPROX = strategy_defaults("fedprox")


class FedProxStrategy(LocalStrategy):
    """FedProx: cross-entropy + ``mu / 2 * ||w - w_g||^2`` to the round's received global weights.

    Args:
        mu: proximal weight, >= 0 (0 is FedAvg). Default: the registry's.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, mu: float = _FEDPROX["mu"]) -> None:
        super().__init__()
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self._global_parameters: list[torch.Tensor] | None = None

    def begin_round(self, model, global_model):
        super().begin_round(model, global_model)
        # Without a global model the model itself holds the received weights at round start.
        reference = global_model if global_model is not None else model
        self._global_parameters = [p.detach().clone() for p in reference.parameters()]

    def loss(self, logits, targets, teacher_logits, model):
        if self._global_parameters is None:
            raise RuntimeError("FedProxStrategy.loss called before begin_round")
        ce = self._supervised(logits, targets)
        proximal = proximal_term(model.parameters(), self._global_parameters, self.mu)
        self._record(ce=ce.item(), proximal=proximal.item())
        return ce + proximal


_FEDNTD = strategy_defaults("fedntd")


class FedNTDStrategy(LocalStrategy):
    """FedNTD: cross-entropy + ``beta`` * not-true distillation from the frozen global model.

    Args:
        tau: softmax temperature.
        beta: weight of the not-true distillation term.

    Defaults: the registry's.
    """

    name: ClassVar[str] = "fedntd"
    uses_teacher: ClassVar[bool] = True
    needs_global_model: ClassVar[bool] = True

    def __init__(self, tau: float = _FEDNTD["tau"], beta: float = _FEDNTD["beta"]) -> None:
        super().__init__()
        self.tau = float(tau)
        self.beta = float(beta)
        self._criterion = NotTrueDistillationLoss(tau=self.tau, beta=self.beta)

    def loss(self, logits, targets, teacher_logits, model):
        loss = self._criterion(logits, targets, teacher_logits)
        self._record(**_diagnostics(self._criterion, ("ce", "ntd")))
        return loss


_FEDKPER = strategy_defaults("fedkper")


class FedKPerStrategy(LocalStrategy):
    """FedKPer: ``ce + beta * kl`` with ``beta = min(1 / CE(teacher), lambda_max)`` per batch (docs/design.md, The reference setting).

    Args:
        tau: softmax temperature of the KL term.
        lambda_max: upper bound of ``beta``.

    Defaults: the registry's (the paper's tau = 1, lambda_max = 10). ``stats()`` gives the round means of
    ``ce``, ``kl`` and ``beta``.
    """

    name: ClassVar[str] = "fedkper"
    uses_teacher: ClassVar[bool] = True
    needs_global_model: ClassVar[bool] = True

    def __init__(self, tau: float = _FEDKPER["tau"], lambda_max: float = _FEDKPER["lambda_max"]) -> None:
        super().__init__()
        self.tau = float(tau)
        self.lambda_max = float(lambda_max)
        self._criterion = KnowledgePersonalizationLoss(tau=self.tau, lambda_max=self.lambda_max)

    def set_supervised(self, criterion):
        super().set_supervised(criterion)
        self._criterion.supervised = criterion

    def loss(self, logits, targets, teacher_logits, model):
        loss = self._criterion(logits, targets, teacher_logits)
        self._record(**_diagnostics(self._criterion, ("ce", "kl", "beta")))
        return loss


_DITTO = strategy_defaults("ditto")


class DittoStrategy(FedProxStrategy):
    """Ditto (Li et al., ICML 2021): the site's personalized model ``v`` minimizes
    ``CE(v) + mu / 2 * ||v - w_g||^2`` with ``w_g`` the round's received global weights; the global update is
    trained separately with plain cross-entropy (the caller trains that copy with :class:`FedAvgStrategy`).

    Args:
        mu: the paper's lambda, the pull of the personalized model towards the global one (>= 0; 0 is
            Local-only training of the personalized model). Default: the registry's (1, as the authors' runs).
    """

    name: ClassVar[str] = "ditto"
    needs_global_model: ClassVar[bool] = True

    def __init__(self, mu: float = _DITTO["mu"]) -> None:
        super().__init__(mu=mu)


class LocalOnlyStrategy(FedAvgStrategy):
    """Local-only training: cross-entropy on the site's own model, which never takes the global weights."""

    name: ClassVar[str] = "local"


def _diagnostics(criterion: nn.Module, names: tuple[str, ...]) -> dict[str, float]:
    """The last-batch diagnostics a loss module exposes as float attributes (those it has)."""
    return {name: float(getattr(criterion, name)) for name in names if getattr(criterion, name, None) is not None}


_STRATEGIES: Mapping[str, type[LocalStrategy]] = {
    cls.name: cls
    for cls in (FedAvgStrategy, FedProxStrategy, FedNTDStrategy, FedKPerStrategy, DittoStrategy, LocalOnlyStrategy)
}

STRATEGY_NAMES: tuple[str, ...] = tuple(_STRATEGIES)
"""Names accepted by :func:`make_strategy`."""


def make_strategy(name: str, **params: float) -> LocalStrategy:
    """Build a strategy by name with its parameters, e.g. ``make_strategy("fedprox", mu=0.01)``.

    Raises:
        ValueError: unknown name or parameter; the message lists the valid ones.
    """
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGY_NAMES)}")
    cls = _STRATEGIES[name]
    valid = [key for key in inspect.signature(cls.__init__).parameters if key != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for strategy {name!r}; "
            f"valid parameters: {', '.join(valid) if valid else '(none)'}"
        )
    return cls(**params)
