"""Every algorithm this project runs, once: the learner, the job generator, ``compare`` and the docs read it.

An entry says what a site trains (its local strategy and that strategy's parameters), how the server weights
the uploads, which model a site keeps, and whether the sites' data are pooled. The parameters of the entry
named after a strategy (``fedprox`` for ``FedProxStrategy``) are that strategy's defaults: the strategy
constructors read them from here (:func:`strategy_defaults`).

Standard library only: ``fedkper-monai --help`` lists the algorithms without importing torch or FLARE.

To add a baseline: a strategy in ``fedkper_monai/training/strategies.py`` and one :class:`Algorithm` line in
``_BASELINES`` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Algorithm", "ALGORITHMS", "WEIGHTINGS", "SITE_MODELS", "get_algorithm", "strategy_defaults"]

WEIGHTINGS = ("score", "samples")
"""Server weightings: FedKPer's score (docs/design.md, The reference setting) or FedAvg's sample counts."""

SITE_MODELS = ("global", "personal", "own")
"""What a site keeps between rounds; see :attr:`Algorithm.site_model`."""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: what the sites train, how the server weights their uploads, which model a site keeps.

    Args:
        name: what users pass (``compare --algorithms``), the run folder and the metrics header's ``algorithm``.
        strategy: the sites' local objective, a ``fedkper_monai.training.make_strategy`` name.
        params: the strategy's parameters (read-only).
        weighting: the aggregator's weighting, ``"score"`` (FedKPer) or ``"samples"`` (FedAvg).
        site_model: ``"global"``: each round the site trains the received global model, which becomes its
            personalized model and its upload; ``"personal"`` (Ditto): the site keeps a personalized model
            across rounds, trained with the strategy, and uploads the received model trained with
            cross-entropy; ``"own"`` (Local-only): the site keeps its own model and ignores the global one.
        pooled: every site's data pooled into one site (the centralized upper bound).
        min_effective_sites: the aggregator's opt-in remedy for rounds the score hands to one site (score
            weights blended toward sample counts until they spread over this many effective sites; 0: off).
        description: one line for ``--help`` (without the parameters: :meth:`summary` adds them).
    """

    name: str
    strategy: str
    params: Mapping[str, float] = field(default_factory=dict, hash=False)
    weighting: str = "samples"
    site_model: str = "global"
    pooled: bool = False
    min_effective_sites: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"{self.name}: weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.site_model not in SITE_MODELS:
            raise ValueError(f"{self.name}: site_model must be one of {SITE_MODELS}, got {self.site_model!r}")
        object.__setattr__(self, "params", MappingProxyType({key: float(value) for key, value in self.params.items()}))

    @property
    def keeps_site_model(self) -> bool:
        """The site keeps a model of its own across rounds (Ditto, Local-only)."""
        return self.site_model != "global"

    def summary(self) -> str:
        """The description with the parameters, e.g. ``FedProx: cross-entropy + proximal term (mu=0.01)``."""
        if not self.params:
            return self.description
        return f"{self.description} ({', '.join(f'{key}={value:g}' for key, value in self.params.items())})"


_BASELINES = (
    # tau = 1, lambda_max = 10: the paper's setting (docs/design.md, The reference setting).
    Algorithm("fedkper", "fedkper", {"tau": 1.0, "lambda_max": 10.0}, "score",
              description="FedKPer: knowledge-personalization loss, score-weighted aggregation"),
    Algorithm("fedavg", "fedavg", description="FedAvg: cross-entropy, sample-count weights"),
    Algorithm("fedprox", "fedprox", {"mu": 0.01}, description="FedProx: cross-entropy + proximal term"),
    Algorithm("fedntd", "fedntd", {"tau": 1.0, "beta": 1.0},
              description="FedNTD: cross-entropy + not-true distillation"),
    # mu (the paper's lambda) = 1: the Ditto authors' published runs (litian96/ditto, run_*_ditto_lam1.sh: --lam=1).
    Algorithm("ditto", "ditto", {"mu": 1.0}, site_model="personal",
              description="Ditto: personalized model per site, proximal pull to the global model"),
    Algorithm("local", "local", site_model="own",
              description="Local-only: each site trains its own model, no federation"),
)
_BY_NAME = {algorithm.name: algorithm for algorithm in _BASELINES}
_VARIANTS = (
    dataclasses.replace(_BY_NAME["fedavg"], name="centralized", pooled=True,
                        description="Centralized upper bound: all training data pooled at one site"),
    dataclasses.replace(_BY_NAME["fedkper"], name="fedkper_loss_only", weighting="samples",
                        description="ablation: FedKPer loss, sample-count weights"),
    dataclasses.replace(_BY_NAME["fedavg"], name="fedkper_weighting_only", weighting="score",
                        description="ablation: cross-entropy loss, FedKPer score weights"),
    # 1.5 effective sites: with the paper's 2 sampled sites, the smaller weight is kept at about 0.21 or more.
    dataclasses.replace(_BY_NAME["fedkper"], name="fedkper_blend", min_effective_sites=1.5,
                        description="remedy: FedKPer, score weights blended toward sample counts below 1.5 effective sites"),
)

ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType({a.name: a for a in _BASELINES + _VARIANTS})
"""Every algorithm by name, in the order ``--help`` lists them."""


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid names: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def strategy_defaults(strategy: str) -> dict[str, float]:
    """The default parameters of a local strategy: those of the baseline named after it.

    Raises:
        ValueError: no baseline is named after ``strategy``.
    """
    baseline = _BY_NAME.get(strategy)
    if baseline is None or baseline.strategy != strategy:
        raise ValueError(f"no algorithm is named after strategy {strategy!r}; baselines: {', '.join(_BY_NAME)}")
    return dict(baseline.params)
