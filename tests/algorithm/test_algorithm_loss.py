"""FedKPer, FedNTD and FedProx objectives, checked against hand-written numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedkper_monai.algorithm import KnowledgePersonalizationLoss, NotTrueDistillationLoss, proximal_term


# --- reference math in plain numpy (rows = samples or voxels, columns = classes) ------------------
def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np_log_softmax(z)[np.arange(len(y)), y].mean())


def np_kl(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """tau^2 * mean over rows of sum_c p_t (log p_t - log p_s)."""
    log_ps, log_pt = np_log_softmax(student / tau), np_log_softmax(teacher / tau)
    return float(tau**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean())


def np_fedkper(student, teacher, y, tau=1.0, lambda_max=10.0):
    beta = min(1.0 / (np_ce(teacher, y) + 1e-8), lambda_max)
    return np_ce(student, y) + beta * np_kl(student, teacher, tau), beta


def as_rows(x: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) -> (N * prod(spatial), C)."""
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


# --- FedKPer -------------------------------------------------------------------------------------
class TestKnowledgePersonalizationLoss:
    def test_hand_computed_two_class_example(self):
        # s = [1, 0], t = [2, 0], y = 0.
        # ce   = log(1 + e^-1)                                   = 0.31326169
        # ce_t = log(1 + e^-2)                                   = 0.12692801, beta = 7.87848...
        # kl   = p_t . (log p_t - log p_s) with p_t = (0.88080, 0.11920)
        ce = np.log(1 + np.exp(-1.0))
        ce_t = np.log(1 + np.exp(-2.0))
        p_t = np.array([1, np.exp(-2.0)]) / (1 + np.exp(-2.0))
        p_s = np.array([1, np.exp(-1.0)]) / (1 + np.exp(-1.0))
        kl = float((p_t * np.log(p_t / p_s)).sum())
        beta = 1 / (ce_t + 1e-8)
        loss_fn = KnowledgePersonalizationLoss()
        loss = loss_fn(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([[2.0, 0.0]]))
        assert loss.item() == pytest.approx(ce + beta * kl, abs=1e-5)
        assert loss_fn.ce == pytest.approx(ce, abs=1e-6)
        assert loss_fn.beta == pytest.approx(beta, rel=1e-5)
        assert loss_fn.kl == pytest.approx(kl, abs=1e-6)
        assert all(isinstance(v, float) for v in (loss_fn.ce, loss_fn.kl, loss_fn.beta))

    def test_batch_with_temperature_matches_numpy(self):
        rng = np.random.default_rng(0)
        student, teacher = rng.normal(size=(6, 4)) * 2, rng.normal(size=(6, 4)) * 2
        y = rng.integers(0, 4, size=6)
        expected, expected_beta = np_fedkper(student, teacher, y, tau=2.5, lambda_max=10.0)
        loss_fn = KnowledgePersonalizationLoss(tau=2.5)
        s, t = torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32)
        loss = loss_fn(s, torch.tensor(y), t)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert loss_fn.beta == pytest.approx(expected_beta, rel=1e-5)

    def test_beta_is_clamped_at_lambda_max_for_a_perfect_teacher(self):
        perfect_teacher = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0]])  # CE ~ 1e-22
        student = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        y = torch.tensor([0, 2])
        loss_fn = KnowledgePersonalizationLoss()
        loss = loss_fn(student, y, perfect_teacher)
        assert loss_fn.beta == 10.0
        assert loss.item() == pytest.approx(loss_fn.ce + 10.0 * loss_fn.kl, rel=1e-6)
        capped = KnowledgePersonalizationLoss(lambda_max=3.0)
        capped(student, y, perfect_teacher)
        assert capped.beta == 3.0

    def test_loss_equals_ce_when_student_equals_teacher(self):
        logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, -0.5]])
        y = torch.tensor([2, 0])
        loss_fn = KnowledgePersonalizationLoss()
        loss = loss_fn(logits, y, logits.clone())
        assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-7)
        assert loss_fn.kl == pytest.approx(0.0, abs=1e-7)

    def test_gradient_does_not_reach_the_teacher(self):
        student = torch.randn(4, 3, requires_grad=True)
        teacher = torch.randn(4, 3, requires_grad=True)
        KnowledgePersonalizationLoss()(student, torch.tensor([0, 1, 2, 0]), teacher).backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum() > 0

    def test_beta_is_a_constant_in_the_gradient(self):
        # d loss / d s must equal d(ce + beta_const * kl) / d s: beta only scales, it is not differentiated.
        student = torch.randn(5, 3, requires_grad=True)
        teacher = torch.randn(5, 3)
        y = torch.tensor([0, 1, 2, 1, 0])
        loss_fn = KnowledgePersonalizationLoss()
        (grad,) = torch.autograd.grad(loss_fn(student, y, teacher), student)
        beta = loss_fn.beta
        manual = F.cross_entropy(student, y) + beta * F.kl_div(
            F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean"
        )
        (expected,) = torch.autograd.grad(manual, student)
        assert torch.allclose(grad, expected, atol=1e-6)

    def test_targets_n_by_1_and_float_labels_are_accepted(self):
        s, t = torch.randn(3, 4), torch.randn(3, 4)
        y = torch.tensor([3, 0, 1])
        loss_fn = KnowledgePersonalizationLoss()
        reference = loss_fn(s, y, t).item()
        assert loss_fn(s, y.view(3, 1), t).item() == pytest.approx(reference, abs=1e-7)
        assert loss_fn(s, y.float(), t).item() == pytest.approx(reference, abs=1e-7)
        with pytest.raises(ValueError, match="non-integral"):
            loss_fn(s, torch.tensor([0.5, 1.0, 2.0]), t)

    @pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
    def test_dense_logits_average_over_samples_and_voxels(self, spatial):
        rng = np.random.default_rng(1)
        n, c = 2, 3
        student = rng.normal(size=(n, c, *spatial)).astype(np.float32)
        teacher = rng.normal(size=(n, c, *spatial)).astype(np.float32)
        y = rng.integers(0, c, size=(n, *spatial))
        rows_s, rows_t = as_rows(student).astype(np.float64), as_rows(teacher).astype(np.float64)
        expected, _ = np_fedkper(rows_s, rows_t, y.reshape(-1))
        loss_fn = KnowledgePersonalizationLoss()
        s, t = torch.from_numpy(student), torch.from_numpy(teacher)
        plain = loss_fn(s, torch.from_numpy(y), t)
        channel = loss_fn(s, torch.from_numpy(y).unsqueeze(1), t)
        assert plain.item() == pytest.approx(expected, rel=1e-5)
        assert channel.item() == pytest.approx(plain.item(), abs=1e-7)

    def test_half_precision_logits_are_computed_in_float32(self):
        s, t = torch.randn(4, 3), torch.randn(4, 3)
        y = torch.tensor([0, 1, 2, 0])
        loss_fn = KnowledgePersonalizationLoss()
        full = loss_fn(s, y, t).item()
        half = loss_fn(s.half(), y, t.half())
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full, rel=1e-2)

    def test_shape_mismatch_names_both_shapes(self):
        loss_fn = KnowledgePersonalizationLoss()
        with pytest.raises(ValueError) as info:
            loss_fn(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 4))
        assert "(2, 4)" in str(info.value) and "(2, 3)" in str(info.value)
        with pytest.raises(ValueError) as info:
            loss_fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 7, dtype=torch.long), torch.zeros(2, 3, 8, 8))
        assert "(2, 8, 7)" in str(info.value) and "(2, 3, 8, 8)" in str(info.value)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="tau"):
            KnowledgePersonalizationLoss(tau=0.0)
        with pytest.raises(ValueError, match="lambda_max"):
            KnowledgePersonalizationLoss(lambda_max=-1.0)
        fresh = KnowledgePersonalizationLoss()
        assert np.isnan(fresh.ce) and np.isnan(fresh.kl) and np.isnan(fresh.beta)

    def test_trains_a_real_network_toward_the_labels(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
        x, y = torch.randn(24, 1, 4, 4), torch.randint(0, 3, (24,))
        loss_fn = KnowledgePersonalizationLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with torch.no_grad():
            teacher_logits = teacher(x)
        first = None
        for _ in range(30):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y, teacher_logits)
            loss.backward()
            optimizer.step()
            first = loss.item() if first is None else first
        assert loss.item() < first
        assert all(p.grad is None for p in teacher.parameters())


# --- FedNTD --------------------------------------------------------------------------------------
def np_ntd(student, teacher, y, tau, beta):
    keep = np.ones_like(student, dtype=bool)
    keep[np.arange(len(y)), y] = False
    c = student.shape[1]
    s_nt, t_nt = student[keep].reshape(-1, c - 1), teacher[keep].reshape(-1, c - 1)
    return np_ce(student, y) + beta * np_kl(s_nt, t_nt, tau)


class TestNotTrueDistillationLoss:
    def test_hand_computed_single_sample(self):
        # s = [1, 2, 0.5], t = [0.2, 1.5, -1], y = 1, tau = 2, beta = 0.5.
        # Not-true logits: s' = [1, 0.5], t' = [0.2, -1]; at tau = 2: s'/2 = [0.5, 0.25], t'/2 = [0.1, -0.5].
        q_s = np.exp([0.5, 0.25]) / np.exp([0.5, 0.25]).sum()
        q_t = np.exp([0.1, -0.5]) / np.exp([0.1, -0.5]).sum()
        kl = 4.0 * float((q_t * np.log(q_t / q_s)).sum())
        s = np.array([1.0, 2.0, 0.5])
        ce = float(np.log(np.exp(s).sum()) - s[1])
        loss = NotTrueDistillationLoss(tau=2.0, beta=0.5)(
            torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1]), torch.tensor([[0.2, 1.5, -1.0]])
        )
        assert loss.item() == pytest.approx(ce + 0.5 * kl, abs=1e-6)

    def test_true_class_logit_of_the_teacher_is_ignored(self):
        s = torch.tensor([[1.0, 2.0, 0.5]])
        loss_fn = NotTrueDistillationLoss()
        a = loss_fn(s, torch.tensor([1]), torch.tensor([[0.2, 1.5, -1.0]]))
        b = loss_fn(s, torch.tensor([1]), torch.tensor([[0.2, -30.0, -1.0]]))
        assert a.item() == pytest.approx(b.item(), abs=1e-6)

    def test_batch_with_different_targets_matches_numpy(self):
        rng = np.random.default_rng(2)
        student, teacher = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
        y = np.array([0, 4, 2, 2, 1, 3, 0])
        expected = np_ntd(student, teacher, y, tau=3.0, beta=1.5)
        loss = NotTrueDistillationLoss(tau=3.0, beta=1.5)(
            torch.tensor(student, dtype=torch.float32), torch.tensor(y), torch.tensor(teacher, dtype=torch.float32)
        )
        assert loss.item() == pytest.approx(expected, rel=1e-5)

    def test_dense_input_matches_numpy(self):
        rng = np.random.default_rng(3)
        student = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
        teacher = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
        y = rng.integers(0, 4, size=(2, 1, 3, 5))
        rows_s, rows_t = as_rows(student).astype(np.float64), as_rows(teacher).astype(np.float64)
        expected = np_ntd(rows_s, rows_t, y.reshape(-1), 1.0, 1.0)
        loss = NotTrueDistillationLoss()(torch.from_numpy(student), torch.from_numpy(y), torch.from_numpy(teacher))
        assert loss.item() == pytest.approx(expected, rel=1e-5)

    def test_equals_ce_for_equal_logits_and_for_two_classes(self):
        s = torch.tensor([[0.3, -1.0], [2.0, 0.1]])
        y = torch.tensor([1, 0])
        ce = F.cross_entropy(s, y).item()
        loss_fn = NotTrueDistillationLoss(beta=5.0)
        assert loss_fn(s, y, s.clone()).item() == pytest.approx(ce, abs=1e-7)
        # Two classes leave one not-true class: its softmax is 1 for both models, so no KL.
        assert loss_fn(s, y, torch.tensor([[9.0, -9.0], [0.0, 3.0]])).item() == pytest.approx(ce, abs=1e-7)

    def test_gradient_does_not_reach_the_teacher(self):
        student = torch.randn(3, 4, requires_grad=True)
        teacher = torch.randn(3, 4, requires_grad=True)
        NotTrueDistillationLoss()(student, torch.tensor([0, 3, 1]), teacher).backward()
        assert teacher.grad is None and student.grad is not None

    def test_invalid_arguments_and_shapes(self):
        with pytest.raises(ValueError, match="tau"):
            NotTrueDistillationLoss(tau=-1.0)
        with pytest.raises(ValueError, match="beta"):
            NotTrueDistillationLoss(beta=-0.1)
        with pytest.raises(ValueError, match="at least 2 classes"):
            NotTrueDistillationLoss()(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.zeros(2, 1))
        with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
            NotTrueDistillationLoss()(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(3, 4))


# --- FedProx -------------------------------------------------------------------------------------
class TestProximalTerm:
    def test_hand_value(self):
        w = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
        w_g = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
        # 0.1 / 2 * (1 + 4 + 4) = 0.45
        assert proximal_term(w, w_g, mu=0.1).item() == pytest.approx(0.45, abs=1e-7)

    def test_gradient_is_mu_times_difference_and_skips_the_global_model(self):
        w = torch.tensor([1.0, -2.0], requires_grad=True)
        w_g = torch.tensor([0.5, 0.5], requires_grad=True)
        proximal_term([w], [w_g], mu=0.2).backward()
        assert torch.allclose(w.grad, torch.tensor([0.1, -0.5]))
        assert w_g.grad is None

    def test_zero_for_a_copy_of_the_global_model(self):
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2))
        reference = [p.detach().clone() for p in model.parameters()]
        assert proximal_term(model.parameters(), reference, mu=1.0).item() == 0.0
        assert proximal_term([], [], mu=1.0).item() == 0.0

    def test_errors(self):
        with pytest.raises(ValueError, match="mu"):
            proximal_term([torch.zeros(1)], [torch.zeros(1)], mu=-0.01)
        with pytest.raises(ValueError, match="2 parameter tensors but the global model has 1"):
            proximal_term([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], mu=0.01)
        with pytest.raises(ValueError, match=r"parameter 0: shape \(2,\).*\(3,\)"):
            proximal_term([torch.zeros(2)], [torch.zeros(3)], mu=0.01)
