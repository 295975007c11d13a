"""SENSE operator and data-consistency properties (tiny, CPU)."""
import numpy as np
import pytest
import torch

from models.dc import DataConsistency, kspace_residual
from models.fft import fft2c
from models.operators import SenseOperator, conjugate_gradient, expand_mask, sense_adjoint, sense_forward


def _randc(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))


def _maps(b, c, ny, nx, seed=1):
    s = _randc(b, c, ny, nx, seed=seed)
    return s / torch.sqrt(torch.sum(s.abs() ** 2, dim=1, keepdim=True))  # sum |S|^2 = 1


def _line_mask(b, ny, seed=2):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, ny, generator=g) < 0.3
    m[:, ny // 2 - 2: ny // 2 + 2] = True
    return m


@pytest.mark.parametrize("coils", [None, 4])
def test_adjoint_dot_product(coils):
    b, ny, nx = 2, 13, 10
    maps = None if coils is None else _maps(b, coils, ny, nx)
    mask = _line_mask(b, ny)
    x = _randc(b, ny, nx, seed=3)
    y = _randc(b, coils or 1, ny, nx, seed=4)
    lhs = torch.sum(sense_forward(x, maps, mask) * y.conj())
    rhs = torch.sum(x * sense_adjoint(y, maps, mask).conj())
    assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_expand_mask_layouts():
    ny, nx = 7, 5
    line = torch.tensor([1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    full = expand_mask(line, ny, nx)
    assert full.shape == (1, 1, ny, nx)
    assert torch.equal(full[0, 0, :, 3], line.float())
    assert torch.equal(expand_mask(line[None].repeat(3, 1), ny, nx)[2], full[0])
    assert torch.equal(expand_mask(full[0, 0], ny, nx), full)
    with pytest.raises(ValueError):
        expand_mask(torch.ones(6, dtype=torch.bool), ny, nx)


def test_hard_dc_single_coil_replaces_measured_samples_exactly():
    b, ny, nx = 2, 15, 11
    mask = _line_mask(b, ny)
    y = expand_mask(mask, ny, nx) * _randc(b, 1, ny, nx, seed=5)
    x = _randc(b, ny, nx, seed=6)
    out = DataConsistency("hard")(x, y, mask)
    k_out, k_in = fft2c(out), fft2c(x)
    m = expand_mask(mask, ny, nx)[:, 0].bool().expand(b, ny, nx)
    assert torch.allclose(k_out[m], y[:, 0][m], atol=1e-5)
    assert torch.allclose(k_out[~m], k_in[~m], atol=1e-5)  # unsampled: the prediction stays


@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_soft_dc_moves_samples_by_the_stated_fraction(lam):
    b, ny, nx = 1, 12, 9
    mask = _line_mask(b, ny)
    y = expand_mask(mask, ny, nx) * _randc(b, 1, ny, nx, seed=7)
    x = _randc(b, ny, nx, seed=8)
    out = DataConsistency("soft", noise_weight=lam)(x, y, mask)
    k_pred, k_out = fft2c(x), fft2c(out)
    m = expand_mask(mask, ny, nx)[:, 0].bool().expand(b, ny, nx)
    expected = (k_pred + lam * y[:, 0]) / (1 + lam)
    assert torch.allclose(k_out[m], expected[m], atol=1e-5)
    assert torch.allclose(k_out[~m], k_pred[~m], atol=1e-5)


def test_multicoil_gradient_dc_is_per_coil_replacement_then_combination():
    b, c, ny, nx = 2, 4, 14, 10
    maps, mask = _maps(b, c, ny, nx), _line_mask(b, ny)
    y = sense_forward(_randc(b, ny, nx, seed=9), maps, mask)
    x = _randc(b, ny, nx, seed=10)
    out = DataConsistency("hard")(x, y, mask, maps)
    m = expand_mask(mask, ny, nx)
    k = fft2c(maps * x[:, None])
    per_coil = (1 - m) * k + m * y  # replace on every coil ...
    expected = torch.sum(maps.conj() * torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(per_coil, dim=(-2, -1)),
                                                                          dim=(-2, -1), norm="ortho"), dim=(-2, -1)), dim=1)
    assert torch.allclose(out, expected, atol=1e-5)  # ... then combine with S^H


def test_multicoil_hard_dc_exact_for_a_unitary_phase_map_and_converges_otherwise():
    b, ny, nx = 1, 16, 12
    mask = _line_mask(b, ny)
    phase = torch.exp(1j * torch.rand(b, 1, ny, nx) * 6.0).to(torch.complex64)
    y = sense_forward(_randc(b, ny, nx, seed=11), phase, mask)
    out = DataConsistency("hard")(_randc(b, ny, nx, seed=12), y, mask, phase)
    assert float(kspace_residual(out, y, mask, phase)) < 1e-5
    maps = _maps(b, 6, ny, nx)
    y = sense_forward(_randc(b, ny, nx, seed=13), maps, mask)
    x = _randc(b, ny, nx, seed=14)
    dc = DataConsistency("hard")
    residuals = [float(kspace_residual(x, y, mask, maps))]
    for _ in range(30):
        x = dc(x, y, mask, maps)
        residuals.append(float(kspace_residual(x, y, mask, maps)))
    assert all(b_ <= a + 1e-6 for a, b_ in zip(residuals, residuals[1:]))  # Landweber: monotone
    assert residuals[-1] < 0.5 * residuals[1]


def test_multicoil_prox_dc_solves_the_normal_equations():
    b, c, ny, nx, lam = 2, 3, 12, 10, 3.0
    maps, mask = _maps(b, c, ny, nx), _line_mask(b, ny)
    y = sense_forward(_randc(b, ny, nx, seed=15), maps, mask)
    x = _randc(b, ny, nx, seed=16)
    z = DataConsistency("soft", noise_weight=lam, method="prox", cg_iterations=60)(x, y, mask, maps)
    op = SenseOperator(mask, maps)
    lhs = z + lam * op.normal(z)
    rhs = x + lam * op.H(y)
    assert torch.allclose(lhs, rhs, atol=1e-4)


def test_learned_noise_weight_gets_a_gradient():
    dc = DataConsistency("soft", noise_weight=2.0, learnable=True)
    b, ny, nx = 1, 8, 8
    mask = _line_mask(b, ny)
    y = expand_mask(mask, ny, nx) * _randc(b, 1, ny, nx, seed=17)
    loss = dc(_randc(b, ny, nx, seed=18), y, mask).abs().sum()
    loss.backward()
    assert dc.log_noise_weight.grad is not None and float(dc.log_noise_weight.grad.abs()) > 0


def test_cg_solves_a_small_hermitian_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    spd = (a @ a.T + 6 * torch.eye(6, dtype=torch.float64)).to(torch.complex128)
    rhs = torch.randn(1, 6, generator=g, dtype=torch.float64).to(torch.complex128)
    x = conjugate_gradient(lambda v: v @ spd.T, rhs, iterations=20, tol=1e-12)
    assert np.allclose((x @ spd.T).numpy(), rhs.numpy(), atol=1e-8)
