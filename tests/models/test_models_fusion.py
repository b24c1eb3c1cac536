"""σ = -dL/dWo against finite differences; Meta-FM kernels; the ablation fusions."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from msn_cli.models.base import OutputGradient
from msn_cli.models.fusion import (
    AWMFFusion,
    ConvFusion,
    MetaFusion,
    average_kernels,
    sigma_from_gradients,
)
from msn_cli.models.memory import crop_center
from msn_cli.models.registry import build_backbone

NC = 3


def _fd_gradient(net, pen, y, transform=None) -> torch.Tensor:
    """Central finite differences of the mean CE w.r.t. [Wo.weight, Wo.bias], float64."""
    wo = net.output_layer
    params = torch.cat([wo.weight.detach().flatten(), wo.bias.detach()]).double()
    n_w = wo.weight.numel()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        w = theta[:n_w].reshape(wo.weight.shape)
        logits = F.conv2d(pen.double(), w, theta[n_w:])
        logits = F.interpolate(
            logits,
            size=y.shape[-2:] if transform is None else (16, 16),
            mode="bilinear",
            align_corners=False,
        )
        if transform is not None:
            logits = transform(logits)
        return F.cross_entropy(logits, y, ignore_index=255)

    eps, grad = 1e-5, torch.zeros_like(params)
    for i in range(params.numel()):
        d = torch.zeros_like(params)
        d[i] = eps
        grad[i] = (loss(params + d) - loss(params - d)) / (2 * eps)
    return -grad


@pytest.mark.parametrize("crop", [False, True])
def test_sigma_matches_finite_differences(crop: bool) -> None:
    torch.manual_seed(0)
    net = build_backbone("unet", NC, width=0.05).eval()  # Wo: 4 -> 3 channels
    x = torch.randn(2, 3, 16, 16)
    y = torch.randint(0, NC, (2, 16, 16))
    y[0, :3] = 255
    with torch.no_grad():
        pen = net(x).penultimate
    transform = partial(crop_center, ratio=4, size=(16, 16)) if crop else None
    g = net.output_gradient(pen, y, size=(16, 16), transform=transform)
    assert g.grad_sum.shape == (2, net.output_size)
    assert g.count.tolist() == [16 * 13, 16 * 16]
    expect = _fd_gradient(net, pen, y, transform)
    torch.testing.assert_close(g.mean().double(), expect, rtol=1e-4, atol=1e-6)


def test_sigma_of_any_patches_from_their_per_sample_parts() -> None:
    """train-fusion caches each patch's σ parts once; σ of any support batch (rows of that
    cache) equals σ computed on that batch alone, unlabelled patches included."""
    torch.manual_seed(0)
    net = build_backbone("unet", NC, width=0.05).eval()
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, NC, (4, 16, 16))
    y[1] = 255  # a patch without labels: count 0
    with torch.no_grad():
        pen = net(x).penultimate
    cached = net.output_gradient(pen, y)
    assert cached.count.tolist()[1] == 0
    for rows in ([0, 2, 3], [1, 3], [1]):
        part = OutputGradient(cached.grad_sum[rows], cached.count[rows])
        alone = net.output_gradient(pen[rows], y[rows])
        torch.testing.assert_close(sigma_from_gradients(part, part), torch.cat([alone.mean()] * 2))
    assert sigma_from_gradients(cached, cached, per_sample=True).shape == (4, 2 * net.output_size)


def _maps(b: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, NC, size, size), torch.randn(b, NC, size, size)


def test_meta_fusion_kernels_and_sigma_dependence() -> None:
    torch.manual_seed(0)
    fm = MetaFusion(NC, sigma_dim=24)
    sigma = torch.randn(24)
    w1, b1, w2, b2 = fm.kernels(fm.generate(sigma))
    assert (w1.shape, b1.shape, w2.shape, b2.shape) == (
        (NC, 2 * NC, 3, 3),
        (NC,),
        (NC, NC, 3, 3),
        (NC,),
    )
    batch = fm.kernels(fm.generate(torch.randn(5, 24)))
    assert batch[0].shape == (5, NC, 2 * NC, 3, 3) and batch[3].shape == (5, NC)
    s1, s2 = _maps()
    a, b = fm(s1, s2, sigma=sigma), fm(s1, s2, sigma=-sigma)
    assert a.shape == (2, NC, 8, 8)
    assert not torch.allclose(a, b)
    # it starts as "average the two branches"
    avg = (s1.softmax(1) + s2.softmax(1)) / 2
    torch.testing.assert_close(a, avg, atol=0.05, rtol=0)
    # σ is normalised: its scale does not matter
    torch.testing.assert_close(fm(s1, s2, sigma=sigma * 1e-25), a)
    torch.testing.assert_close(fm(s1, s2, sigma=sigma * 1e6), a)
    # per-sample σ equals the shared one when the rows agree
    torch.testing.assert_close(fm(s1, s2, sigma=sigma.expand(2, 24)), a, atol=1e-6, rtol=1e-5)
    loss = fm(s1, s2, sigma=sigma).sum()
    loss.backward()
    assert fm.fc1.weight.grad is not None and fm.fc1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="D=24"):
        fm.generate(torch.randn(7))


def test_exact_average_kernels() -> None:
    s1, s2 = _maps()
    p = torch.cat([s1.softmax(1), s2.softmax(1)], 1)
    w1, b1, w2, b2 = average_kernels(NC)
    out = F.conv2d(F.relu(F.conv2d(p, w1, b1, padding=1)), w2, b2, padding=1)
    torch.testing.assert_close(out, (s1.softmax(1) + s2.softmax(1)) / 2)
    torch.testing.assert_close(ConvFusion(NC, init="average")(s1, s2), out)
    assert ConvFusion(NC)(s1, s2).shape == out.shape
    with pytest.raises(ValueError, match="same shape"):
        ConvFusion(NC)(s1, s2[..., :4, :4])


def test_awmf_fusion_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    fusion = AWMFFusion(NC, width=0.0625)
    s1, s2 = _maps(size=32)
    s3 = torch.randn_like(s1)
    images = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    out = fusion(s1, s2, s3, images=images)
    assert out.shape == s1.shape
    out.sum().backward()
    assert all(p.grad is not None for p in fusion.parameters())
    with pytest.raises(ValueError, match="three images"):
        fusion(s1, s2, s3)


def test_average_initialised_conv_and_meta_fm_agree_at_step_0() -> None:
    """``--fusion-init average``: "w/o Meta" and Meta-FM start as the same fusion, the mean of
    the two branches (Meta-FM exactly for σ = 0; for any σ up to its last FC's small initial
    weights); AWMF as the mean of its three. ``he`` starts each elsewhere."""
    torch.manual_seed(0)
    s1, s2 = _maps()
    conv, meta = ConvFusion(NC, init="average"), MetaFusion(NC, 24, init="average")
    avg = (s1.softmax(1) + s2.softmax(1)) / 2
    torch.testing.assert_close(conv(s1, s2), avg)
    torch.testing.assert_close(meta(s1, s2, sigma=torch.zeros(24)), conv(s1, s2))
    torch.testing.assert_close(meta(s1, s2, sigma=torch.randn(24)), conv(s1, s2), atol=0.02, rtol=0)
    he_conv, he_meta = ConvFusion(NC, init="he"), MetaFusion(NC, 24, init="he")
    assert not torch.allclose(he_conv(s1, s2), avg, atol=0.1)
    assert not torch.allclose(he_meta(s1, s2, sigma=torch.zeros(24)), avg, atol=0.1)
    assert ConvFusion(NC).init == MetaFusion(NC, 24).init == AWMFFusion(NC, width=0.0625).init
    s1, s2 = _maps(size=32)
    s3, images = torch.randn_like(s1), [torch.randn(2, 3, 32, 32) for _ in range(3)]
    mean3 = (s1.softmax(1) + s2.softmax(1) + s3.softmax(1)) / 3
    awmf = AWMFFusion(NC, width=0.0625, init="average")
    torch.testing.assert_close(awmf(s1, s2, s3, images=images), mean3)
    he_awmf = AWMFFusion(NC, width=0.0625, init="he")
    assert not torch.allclose(he_awmf(s1, s2, s3, images=images), mean3, atol=0.1)
    awmf(s1, s2, s3, images=images).square().sum().backward()  # its zero layers learn
    assert awmf.weighting.fc.weight.grad.abs().sum() > 0
    assert awmf.aggregate[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="init must be one of"):
        ConvFusion(NC, init="zero")


def test_msn_starts_every_fusion_alike() -> None:
    """MSN(config, fusion_init): the same start whichever fusion the config names."""
    from msn_cli.models.msn import MSN, MSNConfig

    torch.manual_seed(0)
    cfg = MSNConfig(backbone="bisenet", width=0.125, num_classes=NC, patch_size=32)
    s1, s2, s3 = (torch.randn(1, NC, 32, 32) for _ in range(3))
    nets = {f: MSN(replace(cfg, fusion=f)).eval() for f in ("meta", "conv")}
    fused = [net.fuse(s1, s2, s3, sigma=torch.zeros(net.sigma_dim)) for net in nets.values()]
    torch.testing.assert_close(fused[0], fused[1])
    he = MSN(replace(cfg, fusion="conv"), fusion_init="he").eval()
    assert he.fusion.init == "he" and not torch.allclose(he.fuse(s1, s2, s3), fused[1])


def test_meta_fm_sees_the_magnitude_of_sigma_with_pseudo() -> None:
    """σ ``pseudo`` models (``magnitude=True``) feed log(rms σ) besides σ's direction: two σ of
    one direction but other sizes give other kernels; without it, the same kernels."""
    torch.manual_seed(0)
    small = torch.randn(24) * 1e-4
    plain, sized = MetaFusion(NC, 24), MetaFusion(NC, 24, magnitude=True)
    assert sized.fc1.in_features == 25 and plain.fc1.in_features == 24
    for net in (plain, sized):
        torch.nn.init.normal_(net.fc2.weight)  # a trained generator, not the small start
    torch.testing.assert_close(plain.generate(small), plain.generate(small * 100))
    assert not torch.allclose(sized.generate(small), sized.generate(small * 100), atol=1e-3)
    mag = MetaFusion.log_magnitude(torch.stack([small, small * 100, torch.zeros(24)]))
    rms = small.pow(2).mean().sqrt()
    torch.testing.assert_close(mag[:2, 0], torch.log(torch.stack([rms, rms * 100])) / 10)
    assert torch.isfinite(mag).all()  # an all-zero σ too
    s1, s2 = _maps()  # a fresh one still starts as the average, whatever σ's size
    fresh = MetaFusion(NC, 24, magnitude=True)
    avg = ConvFusion(NC, init="average")(s1, s2)
    for sigma in (small, small * 1e6, torch.zeros(24)):
        torch.testing.assert_close(fresh(s1, s2, sigma=sigma), avg, atol=0.02, rtol=0)


def test_pseudo_sigma_is_per_patch_and_label_free() -> None:
    """σ ``pseudo``: each patch's σ is output_gradients against argmax S1, so the forward
    needs no label, works under inference_mode (predict) and under no_grad, and gives
    different patches different kernels."""
    from msn_cli.inference import run_branches
    from msn_cli.io.card import ModelCard
    from msn_cli.models.msn import MSN, MSNConfig

    torch.manual_seed(0)
    cfg = MSNConfig(backbone="bisenet", width=0.125, num_classes=NC, patch_size=32, sigma="pseudo")
    net = MSN(cfg).eval()
    torch.nn.init.normal_(net.fusion.fc2.weight, std=0.5)  # as if trained: σ matters
    x1, x2, x3 = (torch.randn(3, 3, 32, 32) for _ in range(3))
    with torch.no_grad():
        mem = net.meta_features(x3)
        out1, out2 = net.branch(x1, "x1", mem.features), net.branch(x2, "x2", mem.features)
        pseudo = out1.logits.argmax(1)
        g1, g2 = net.output_gradients(out1, out2, pseudo)
        want_sigma = sigma_from_gradients(g1, g2, per_sample=True)
        sigma = net.pseudo_sigma(out1, out2)
        want = net.fuse(out1.logits, out2.logits, mem.logits, sigma=want_sigma)
    torch.testing.assert_close(sigma, want_sigma)
    assert sigma.shape == (3, net.sigma_dim) and not torch.allclose(sigma[0], sigma[1])
    kernels = net.fusion.generate(sigma)
    assert not torch.allclose(kernels[0], kernels[1])  # each patch its own fusion
    card = ModelCard(cfg.to_dict(), ["a", "b", "c"])
    stages = ("meta", "memrm", "fusion")
    with torch.inference_mode():  # the predictor's mode
        got = run_branches(net, stages, card, x1, x2, x3, outputs=("fusion",))["fusion"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(net(x1, x2, x3).s, want)  # forward without σ: the same
    assert not bool(net.fusion.has_stored)
    fixed = MSN(replace(cfg, sigma="fixed"))
    with pytest.raises(ValueError, match="no σ given and no stored"):
        fixed(x1, x2, x3)
    with pytest.raises(ValueError, match="is Meta-FM's"):
        replace(cfg, fusion="conv")
