"""SGF-MRI shapes, DC for both tasks, MCNS locality (tiny configs)."""
import pytest
import torch

from models.complex_channels import from_channels
from models.fft import fft2c
from models.sgfmri import SGFMRI, NeighbourhoodSimilarity, SGFMRIConfig, lowres_mask
from models.operators import sense_forward

TINY = SGFMRIConfig(channels=8, groups=4, squeeze=8, heads=2, dc_mode="hard")


@pytest.mark.parametrize("shape", [(1, 23, 31), (2, 17, 26)])
def test_any_matrix_with_and_without_reference(shape):
    torch.manual_seed(0)
    model = SGFMRI(TINY).eval()
    b, h, w = shape
    x, r = torch.randn(b, 2, h, w), torch.randn(b, 2, h, w)
    with torch.no_grad():
        a, z = model(x, r), model(x, None)
    assert a.shape == z.shape == (b, 2, h, w)
    assert not torch.allclose(a, z)  # the reference changes the output


def test_reconstruction_dc_multicoil_and_sr_dc_to_the_kspace_centre():
    torch.manual_seed(1)
    model = SGFMRI(TINY).eval()
    b, h, w = 1, 24, 20
    truth = torch.complex(torch.randn(b, h, w), torch.randn(b, h, w))
    # super-resolution: the measured data are the centre block; hard DC reproduces it exactly
    m = lowres_mask(h, w, 4)
    assert int(m.sum()) == 6 * 5
    y = sense_forward(truth, None, m)
    zf = torch.stack((truth.real, truth.imag), 1) * 0.3
    with torch.no_grad():
        out = from_channels(model(zf, zf, kspace=y, mask=m))
    k = fft2c(out)[:, m]
    assert torch.allclose(k, y[:, 0][:, m], atol=1e-4)


def test_mcns_is_local_so_its_cost_is_linear():
    """A change at one pixel moves the descriptor only within 4 px (2 for the offsets, 2 for sigma)."""
    torch.manual_seed(2)
    mcns = NeighbourhoodSimilarity(8, 4, 6)
    ft, fr = torch.randn(1, 8, 30, 30), torch.randn(1, 8, 30, 30)
    st, sr = torch.rand(1, 4, 30, 30), torch.rand(1, 4, 30, 30)
    base = mcns(ft, fr, st, sr)
    ft2 = ft.clone()
    ft2[0, :, 15, 15] += 5.0
    diff = (mcns(ft2, fr, st, sr) - base).abs().sum(1)[0]
    changed = torch.nonzero(diff > 1e-6)
    assert len(changed) > 0
    assert int((changed - 15).abs().max()) <= 4


def test_similarity_is_one_for_identical_neighbours():
    mcns = NeighbourhoodSimilarity(4, 2, 4)
    flat = torch.ones(1, 4, 9, 9)
    assert torch.allclose(mcns.similarities(flat, flat), torch.ones(1, 16, 9, 9))


def test_paper_config_is_constructible():
    model = SGFMRI(SGFMRIConfig.paper())
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    torch.manual_seed(3)
    model = SGFMRI(TINY).eval()
    x, r = torch.randn(2, 2, 26, 22), torch.randn(2, 2, 26, 22)
    with torch.no_grad():
        cpu = model(x, r)
        gpu = model.cuda()(x.cuda(), r.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)
