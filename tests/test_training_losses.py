"""Loss terms of the AddSR trainer against hand computations of the official formulas."""
import math

import pytest
import torch

from addsr_core.sampling.schedule import scaled_linear_alphas_cumprod
from addsr_core.training import losses as L


def test_ta_weight_values_are_the_official_0p5_times_2p1_powers():
    assert [L.ta_weight(s) for s in (1, 2, 3, 4)] == [0.5, 0.5 * 2.1, 0.5 * 2.1**2, 0.5 * 2.1**3]
    assert L.ta_weight(4) == pytest.approx(4.6305, abs=1e-12)
    t = L.ta_weight(torch.tensor([1, 2, 3, 4]))
    assert torch.allclose(t, torch.tensor([0.5, 1.05, 2.205, 4.6305], dtype=torch.float64), atol=1e-12)


def test_ta_stage_follows_official_TA_weight_mapping():
    # official TA_weight(t): 999 -> 1, 749 -> 2, 499 -> 3, anything else (the 1000 sentinel) -> 4
    assert [L.ta_stage(t, two_step=True) for t in (999, 749, 499)] == [1, 2, 3]
    assert L.ta_stage(999, two_step=False) == 4
    with pytest.raises(ValueError, match="first timestep"):
        L.ta_stage(249, two_step=True)


def test_student_plan_refining_and_single_step_paths():
    g = torch.Generator().manual_seed(0)
    seen_two, seen_one = False, False
    for _ in range(40):
        plan = L.sample_student_plan(6, g)
        if plan.two_step:
            seen_two = True
            nxt = {999: 749, 749: 499, 499: 249}
            assert all(nxt[int(a)] == int(b) for a, b in zip(plan.first_timesteps, plan.trained_timesteps))
            expect = torch.tensor([L.ta_stage(int(t), True) for t in plan.first_timesteps])
            assert torch.equal(plan.stages, expect)
        else:
            seen_one = True
            assert torch.equal(plan.trained_timesteps, torch.full((6,), 999))
            assert torch.equal(plan.stages, torch.full((6,), 4))
        assert torch.allclose(plan.ta_weights, 0.5 * 2.1 ** (plan.stages.double() - 1))
    assert seen_two and seen_one
    a = L.sample_student_plan(4, torch.Generator().manual_seed(7))
    b = L.sample_student_plan(4, torch.Generator().manual_seed(7))
    assert a.two_step == b.two_step and torch.equal(a.trained_timesteps, b.trained_timesteps)
    assert L.sample_student_plan(3, torch.Generator().manual_seed(1), two_step_prob=0.0).two_step is False
    assert L.sample_student_plan(3, torch.Generator().manual_seed(1), two_step_prob=1.0).two_step is True


def test_teacher_timesteps_shape_and_range():
    t = L.sample_teacher_timesteps(3, 4, torch.Generator().manual_seed(0))
    assert t.shape == (4, 3) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < 1000


def test_sqrt_alpha_bar_weight_is_exact():
    ac = scaled_linear_alphas_cumprod()
    w = L.sqrt_alpha_bar_weight(ac, torch.tensor([[999, 249], [0, 749]]))
    assert w.shape == (2, 2)
    # reference values from the README (§5), float32 alphas_cumprod
    assert w[0, 0].item() == pytest.approx(math.sqrt(0.00466009509), rel=1e-6)
    assert w[0, 1].item() == pytest.approx(math.sqrt(0.675432086), rel=1e-6)
    assert w[1, 1].item() == pytest.approx(math.sqrt(0.0566234477), rel=1e-6)
    assert torch.equal(w[1, 0], ac[0].sqrt())


def test_distillation_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    k, b = 4, 2
    student = torch.rand(b, 3, 5, 6, generator=g, requires_grad=True)
    teacher = torch.rand(k, b, 3, 5, 6, generator=g)
    w = torch.rand(k, b, generator=g)
    ta = torch.tensor([0.5, 4.6305])
    loss = L.distillation_loss(student, teacher, w, ta)
    # the official loop: per teacher chunk (x0_tea - x0_stu)^2 * w, stacked on a new last dim,
    # mean per image times TA_weight, then averaged over the (hard-wired 2) images
    chunks = [(teacher[i] - student) ** 2 * w[i].view(b, 1, 1, 1) for i in range(k)]
    stacked = torch.stack(chunks, dim=-1)
    expected = (stacked[0].mean() * ta[0] + stacked[1].mean() * ta[1]) / 2
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="teacher_x0"):
        L.distillation_loss(student, teacher[:, :1], w, ta)


def test_hinge_and_generator_losses_match_hand_computation():
    real = [torch.tensor([[2.0, 0.5]]), torch.tensor([[-1.0, 1.0]])]
    fake = [torch.tensor([[-2.0, 0.0]]), torch.tensor([[0.5, -0.5]])]
    total, r, f = L.hinge_d_loss(real, fake)
    # relu(1 - [2, .5, -1, 1]) = [0, .5, 2, 0] -> mean .625; relu(1 + [-2, 0, .5, -.5]) = [0, 1, 1.5, .5] -> .75
    assert r.item() == pytest.approx(0.625) and f.item() == pytest.approx(0.75)
    assert total.item() == pytest.approx(1.375)
    assert L.generator_adv_loss(fake).item() == pytest.approx(0.5)  # -mean([-2, 0, .5, -.5])
    assert L.generator_adv_loss([torch.tensor([[1.0, 3.0]])]).item() == pytest.approx(-2.0)
    distill = torch.tensor(0.3)
    assert L.student_loss(distill, [torch.tensor([[1.0, 3.0]])], 0.02).item() == pytest.approx(0.3 - 0.04)


def test_r1_penalty_equals_analytic_gradient_norm():
    # head_i(f) = sum(a_i * f^2) -> d sum / d f = 2 a_i f
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(3, 4, 5, generator=g, requires_grad=True) for i in range(2)}
    a = [0.5, -1.5]
    logits = [(a[i] * feats[str(i)] ** 2).sum(dim=1) for i in range(2)]
    pen = L.r1_penalty(logits, feats)
    expected = torch.stack(
        [((2 * a[i] * feats[str(i)]).reshape(3, -1).norm(dim=1) ** 2).mean() for i in range(2)]
    ).mean()
    assert torch.allclose(pen, expected, rtol=1e-6)
    pen.backward()  # create_graph=True: the penalty itself is differentiable
    assert feats["0"].grad is not None
