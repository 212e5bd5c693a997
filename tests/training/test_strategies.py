"""Each local objective's loss against a hand computation on a tiny batch, and the strategy registry."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from fedkper_monai.algorithm_registry import ALGORITHMS, strategy_defaults
from fedkper_monai.training import (
    STRATEGY_NAMES,
    FedAvgStrategy,
    FedKPerStrategy,
    FedNTDStrategy,
    FedProxStrategy,
    LocalStrategy,
    frozen_copy,
    make_strategy,
)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
TEACHER = torch.tensor([[1.0, 1.5, 0.0], [0.0, -0.5, 2.0]])
TARGETS = torch.tensor([0, 2])


def softmax_row(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def cross_entropy_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return sum(-math.log(softmax_row(row)[y]) for row, y in zip(logits.tolist(), targets.tolist())) / len(targets)


def kl_by_hand(student: list[list[float]], teacher: list[list[float]], tau: float) -> float:
    """tau^2 * mean over rows of KL(softmax(t/tau) || softmax(s/tau))."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = softmax_row(s_row, tau), softmax_row(t_row, tau)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return tau**2 * total / len(student)


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_fedavg_loss_is_cross_entropy():
    strategy = FedAvgStrategy()
    model = linear_model()
    strategy.begin_round(model, None)
    loss = strategy.loss(LOGITS, TARGETS, None, model)
    assert loss.item() == pytest.approx(cross_entropy_by_hand(LOGITS, TARGETS), rel=1e-6)
    assert strategy.stats() == pytest.approx({"ce": cross_entropy_by_hand(LOGITS, TARGETS)}, rel=1e-6)
    assert not FedAvgStrategy.uses_teacher and not FedAvgStrategy.needs_global_model


def test_fedprox_is_cross_entropy_at_round_start_and_adds_half_mu_squared_distance_after_a_step():
    model = linear_model()
    strategy = FedProxStrategy(mu=0.5)
    strategy.begin_round(model, frozen_copy(model))
    ce = cross_entropy_by_hand(LOGITS, TARGETS)
    assert strategy.loss(LOGITS, TARGETS, None, model).item() == pytest.approx(ce, rel=1e-6)

    with torch.no_grad():
        model.weight[0, 0] += 0.3
        model.bias[2] -= 0.4
    loss = strategy.loss(LOGITS, TARGETS, None, model)
    assert loss.item() == pytest.approx(ce + 0.5 / 2 * (0.3**2 + 0.4**2), rel=1e-6)
    loss.backward()  # the proximal term pulls the moved weight back: gradient mu * delta
    assert model.weight.grad[0, 0].item() == pytest.approx(0.5 * 0.3, rel=1e-5)
    assert strategy.stats()["proximal"] == pytest.approx((0.0 + 0.5 / 2 * 0.25) / 2, rel=1e-5)


def test_fedprox_without_global_model_snapshots_the_model_at_round_start():
    model = linear_model()
    strategy = FedProxStrategy(mu=2.0)
    strategy.begin_round(model, None)
    with torch.no_grad():
        model.bias[0] += 1.0
    loss = strategy.loss(LOGITS, TARGETS, None, model)
    assert loss.item() == pytest.approx(cross_entropy_by_hand(LOGITS, TARGETS) + 2.0 / 2 * 1.0, rel=1e-6)


def test_fedkper_loss_is_ce_plus_beta_kl_with_beta_from_teacher_ce():
    tau = 2.0
    strategy = FedKPerStrategy(tau=tau, lambda_max=10.0)
    assert FedKPerStrategy.uses_teacher
    model = linear_model()
    strategy.begin_round(model, frozen_copy(model))
    ce = cross_entropy_by_hand(LOGITS, TARGETS)
    beta = min(1.0 / (cross_entropy_by_hand(TEACHER, TARGETS) + 1e-8), 10.0)
    kl = kl_by_hand(LOGITS.tolist(), TEACHER.tolist(), tau)
    loss = strategy.loss(LOGITS, TARGETS, TEACHER, model)
    assert loss.item() == pytest.approx(ce + beta * kl, rel=1e-5)
    assert strategy.stats() == pytest.approx({"ce": ce, "kl": kl, "beta": beta}, rel=1e-5)


def test_fedkper_beta_is_capped_by_lambda_max_when_the_teacher_is_right():
    confident_teacher = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0]])  # teacher CE ~ 4e-9
    strategy = FedKPerStrategy(lambda_max=3.0)
    model = linear_model()
    strategy.begin_round(model, frozen_copy(model))
    strategy.loss(LOGITS, TARGETS, confident_teacher, model)
    assert strategy.stats()["beta"] == pytest.approx(3.0)


def test_fedkper_stats_are_round_means_and_reset_by_begin_round():
    strategy = FedKPerStrategy()
    model = linear_model()
    strategy.begin_round(model, frozen_copy(model))
    strategy.loss(LOGITS, TARGETS, TEACHER, model)
    strategy.loss(LOGITS[:1], TARGETS[:1], TEACHER[:1], model)
    ces = [cross_entropy_by_hand(LOGITS, TARGETS), cross_entropy_by_hand(LOGITS[:1], TARGETS[:1])]
    assert strategy.stats()["ce"] == pytest.approx(sum(ces) / 2, rel=1e-5)
    strategy.begin_round(model, frozen_copy(model))
    assert strategy.stats() == {}


def test_fedntd_distills_only_the_not_true_classes():
    tau, beta = 2.0, 0.7
    strategy = FedNTDStrategy(tau=tau, beta=beta)
    assert FedNTDStrategy.uses_teacher
    model = linear_model()
    strategy.begin_round(model, frozen_copy(model))
    # Drop each row's true class (0 for row 0, 2 for row 1) before the tempered softmax.
    student_nt = [[0.5, -1.0], [0.1, 0.3]]
    teacher_nt = [[1.5, 0.0], [0.0, -0.5]]
    expected = cross_entropy_by_hand(LOGITS, TARGETS) + beta * kl_by_hand(student_nt, teacher_nt, tau)
    assert strategy.loss(LOGITS, TARGETS, TEACHER, model).item() == pytest.approx(expected, rel=1e-5)

    # The teacher's true-class logit has no influence.
    moved_teacher = TEACHER.clone()
    moved_teacher[0, 0] += 5.0
    assert strategy.loss(LOGITS, TARGETS, moved_teacher, model).item() == pytest.approx(expected, rel=1e-5)


def test_make_strategy_builds_every_name_with_parameters():
    assert STRATEGY_NAMES == ("fedavg", "fedprox", "fedntd", "fedkper", "ditto", "local")
    for name in STRATEGY_NAMES:
        strategy = make_strategy(name)
        assert isinstance(strategy, LocalStrategy) and strategy.name == name
    assert make_strategy("fedprox", mu=0.1).mu == 0.1
    kper = make_strategy("fedkper", tau=2.0, lambda_max=5.0)
    assert kper.params() == {"tau": 2.0, "lambda_max": 5.0}
    assert repr(kper) == "FedKPerStrategy(tau=2.0, lambda_max=5.0)"


def test_strategies_are_exactly_the_registry_strategies():
    assert set(STRATEGY_NAMES) == {algorithm.strategy for algorithm in ALGORITHMS.values()}


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_defaults_and_flags_of_a_strategy_are_its_registry_entry(name):
    """The constructor's defaults are the registry's parameters (same keys, same values), and the site-model
    flags the learner reads follow the registry's site_model."""
    strategy = make_strategy(name)
    assert strategy.params() == strategy_defaults(name) == dict(ALGORITHMS[name].params)
    signature = inspect.signature(type(strategy).__init__).parameters
    assert {key: p.default for key, p in signature.items() if key != "self"} == strategy_defaults(name)
    site_model = ALGORITHMS[name].site_model
    assert (strategy.federated, strategy.personal_model) == (site_model != "own", site_model == "personal")


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_registered_algorithm_builds_its_strategy_with_its_parameters(name):
    algorithm = ALGORITHMS[name]
    strategy = make_strategy(algorithm.strategy, **algorithm.params)
    assert strategy.params() == dict(algorithm.params)
    assert (strategy.federated and not strategy.personal_model) == (not algorithm.keeps_site_model)


def test_make_strategy_rejects_unknown_name_and_parameter():
    with pytest.raises(ValueError, match="unknown strategy 'scaffold'.*fedavg, fedprox, fedntd, fedkper, ditto, local"):
        make_strategy("scaffold")
    with pytest.raises(ValueError, match="'beta'.*'fedkper'.*valid parameters: tau, lambda_max"):
        make_strategy("fedkper", beta=1.0)
    with pytest.raises(ValueError, match="'mu'.*'fedavg'.*none"):
        make_strategy("fedavg", mu=0.1)
    with pytest.raises(ValueError, match="mu"):
        make_strategy("fedprox", mu=-1.0)


def test_ditto_objective_by_hand():
    """Ditto's personalized objective: CE(v) + mu/2 * ||v - w_g||^2, anchored to the received global model."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    global_model = frozen_copy(model)
    with torch.no_grad():
        model.weight[0, 0] += 0.5  # v differs from w_g in one entry by 0.5 and in the bias by 0.2
        model.bias[1] -= 0.2
    strategy = make_strategy("ditto", mu=0.4)
    assert strategy.personal_model and strategy.needs_global_model and strategy.federated
    strategy.begin_round(model, global_model)
    logits = model(torch.eye(3)[:2])
    expected = cross_entropy_by_hand(logits.detach(), TARGETS) + 0.4 / 2 * (0.5**2 + 0.2**2)
    assert strategy.loss(logits, TARGETS, None, model).item() == pytest.approx(expected, rel=1e-5)
    assert make_strategy("ditto").mu == strategy_defaults("ditto")["mu"] == 1.0


def test_local_only_is_cross_entropy_without_federation():
    strategy = make_strategy("local")
    assert not strategy.federated and not strategy.personal_model and not strategy.needs_global_model
    strategy.begin_round(torch.nn.Linear(3, 3), None)
    assert strategy.loss(LOGITS, TARGETS, None, None).item() == pytest.approx(cross_entropy_by_hand(LOGITS, TARGETS), rel=1e-6)
