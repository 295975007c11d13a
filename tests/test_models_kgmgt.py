"""KGMgT shapes, DC at the output, and the paper's structure (tiny configs)."""
import pytest
import torch

from models.complex_channels import from_channels
from models.dc import kspace_residual
from models.kgmgt import AdaptiveSpatiotemporalAttention, KGMgT, KGMgTConfig, WindowAttention, count_parameters
from models.operators import sense_forward

TINY = KGMgTConfig(channels=8, depth=2, heads=2, window=4, mlp_ratio=2.0, asa_groups=2, asa_radius=1, dc_mode="hard")


@pytest.mark.parametrize("shape", [(1, 23, 31), (3, 25, 17), (2, 32, 32)])
def test_any_matrix_and_batch(shape):
    torch.manual_seed(0)
    model = KGMgT(TINY).eval()
    b, h, w = shape
    x = torch.randn(b, 2, h, w)
    with torch.no_grad():
        out = model(x, x.roll(1, -1), x.roll(-1, -1))
    assert out.shape == (b, 2, h, w) and torch.isfinite(out).all()


def test_output_is_data_consistent_multicoil_single_coil_exact():
    torch.manual_seed(1)
    model = KGMgT(TINY).eval()
    b, h, w = 2, 21, 19
    mask = torch.rand(b, h) < 0.3
    truth = torch.complex(torch.randn(b, h, w), torch.randn(b, h, w))
    y = sense_forward(truth, None, mask)
    zf = torch.stack((torch.fft.ifft2(y[:, 0]).real, torch.fft.ifft2(y[:, 0]).imag), 1)  # any input image
    with torch.no_grad():
        out = model(zf, zf, zf, kspace=y, mask=mask)
    assert float(kspace_residual(from_channels(out), y, mask).max()) < 1e-5


def test_official_config_is_constructible_and_larger():
    official = KGMgT(KGMgTConfig.official())
    small = KGMgT(KGMgTConfig.cpu_small())
    assert official.cfg.channels == 16 and official.cfg.depth == 4 and official.cfg.heads == 4
    assert official.cfg.window == 8 and official.cfg.mlp_ratio == 2.0
    assert count_parameters(official) > count_parameters(small)
    x = torch.randn(1, 2, 20, 24)
    with torch.no_grad():
        assert official(x, x, x).shape == x.shape


def test_learner_pass_uses_the_mentor_features_and_both_references():
    torch.manual_seed(2)
    model = KGMgT(TINY).eval()
    x = torch.randn(1, 2, 16, 16)
    r1, r2 = torch.randn_like(x), torch.randn_like(x)
    with torch.no_grad():
        base = model(x, r1, r2)
        assert not torch.allclose(base, model(x, r1 * 2, r2), atol=1e-6)   # t-1 matters (mentor)
        assert not torch.allclose(base, model(x, r1, r2 * 2), atol=1e-6)   # t+1 matters (learner)
        _, feats = model.generator(x, r1)
    assert len(feats) == 5  # 3 encoder + 2 decoder stages are handed to the learner


def test_asa_follows_a_shifted_reference():
    """With matching features set to identity, the soft-argmax flow finds a known shift."""
    torch.manual_seed(3)
    asa = AdaptiveSpatiotemporalAttention(dim=32, groups=2, radius=2, max_offset=2.0)
    with torch.no_grad():
        for conv in (asa.query, asa.key):
            conv.weight.copy_(torch.eye(32).view(32, 32, 1, 1))
            conv.bias.zero_()
        asa.temperature.fill_(50.0)
    target = torch.randn(1, 32, 20, 20)
    ref = target.roll(shifts=(1, 2), dims=(-2, -1))  # content moved down 1, right 2
    _, flow = asa(target, ref)
    inner = flow[0, :, 4:-4, 4:-4]
    assert abs(float(inner[0].median()) - 2.0) < 0.05 and abs(float(inner[0].mean()) - 2.0) < 0.1
    assert abs(float(inner[1].median()) - 1.0) < 0.05 and abs(float(inner[1].mean()) - 1.0) < 0.1


def test_shifted_window_attention_pads_and_masks():
    torch.manual_seed(4)
    attn = WindowAttention(8, 2, (4, 4), shift=(2, 2))
    x = torch.randn(2, 11, 13, 8)
    assert attn(x).shape == x.shape
    rect = WindowAttention(8, 2, (2, 8))
    assert rect(x).shape == x.shape


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    cfg = KGMgTConfig(**{**TINY.to_dict(), "dc_mode": "soft", "dc_learnable": True})
    model = KGMgT(cfg)
    b, h, w = 1, 16, 12
    mask = torch.rand(b, h) < 0.5
    y = sense_forward(torch.complex(torch.randn(b, h, w), torch.randn(b, h, w)), None, mask)
    x = torch.randn(b, 2, h, w)
    model(x, x.flip(-1), x.flip(-2), kspace=y, mask=mask).abs().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree_and_autocast_runs():
    torch.manual_seed(6)
    model = KGMgT(TINY).eval()
    x = torch.randn(2, 2, 24, 20)
    with torch.no_grad():
        cpu = model(x, x.flip(-1), x.flip(-2))
        gpu = model.cuda()(x.cuda(), x.flip(-1).cuda(), x.flip(-2).cuda()).cpu()
        assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(x.cuda(), x.flip(-1).cuda(), x.flip(-2).cuda())
        assert torch.isfinite(half).all()
