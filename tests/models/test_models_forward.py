"""Forward/backward shapes and finite gradients of every backbone and MSN variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msn_cli.models.fusion import sigma_from_gradients
from msn_cli.models.msn import FUSIONS, MSN, MSNConfig
from msn_cli.models.registry import BACKBONES, build_backbone

WIDTH, PATCH, NC = 0.125, 64, 3


def _finite_grads(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, NC, WIDTH).train()
    x = torch.randn(2, 3, PATCH, PATCH)
    out = net(x, features=net.candidate_layers)
    assert out.logits.shape == (2, NC, PATCH, PATCH)
    assert set(out.features) == set(net.candidate_layers)
    for layer, feat in out.features.items():
        assert feat.shape[1] == net.layer_channels[layer], layer
    assert out.penultimate is not None
    assert out.penultimate.shape[1] == net.penultimate_channels
    assert net.output_layer.kernel_size == (1, 1)
    assert net.output_layer.weight.shape[:2] == (NC, net.penultimate_channels)
    torch.testing.assert_close(net.head(out.penultimate, size=x.shape[-2:]), out.logits)
    y = torch.randint(0, NC, (2, PATCH, PATCH))
    y[:, :4] = 255
    loss = F.cross_entropy(out.logits, y, ignore_index=255)
    loss = loss + sum(F.cross_entropy(a, y, ignore_index=255) for a in out.aux_logits)
    loss.backward()
    assert torch.isfinite(loss)
    _finite_grads(net)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_eval_is_deterministic_and_recall_replaces(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, NC, WIDTH).eval()
    x = torch.randn(1, 3, PATCH, PATCH)
    with torch.no_grad():
        a, b = net(x), net(x)
        assert a.aux_logits == ()
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        layer = net.candidate_layers[len(net.candidate_layers) // 2]
        c = net(x, recall={layer: lambda t: t * 0.0 + 1.0})
    assert not torch.equal(a.logits, c.logits)


def test_backbone_bad_input() -> None:
    net = build_backbone("bisenet", NC, WIDTH)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="unknown layer"):
        net(torch.zeros(1, 3, 64, 64), features=("nope",))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet", NC)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_msn_forward_backward(backbone: str, fusion: str) -> None:
    torch.manual_seed(0)
    cfg = MSNConfig(backbone=backbone, width=WIDTH, num_classes=NC, patch_size=PATCH, fusion=fusion)
    net = MSN(cfg).train()
    x1, x2, x3 = (torch.randn(2, 3, PATCH, PATCH) for _ in range(3))
    y1 = torch.randint(0, NC, (2, PATCH, PATCH))
    y1[0, :8] = 255
    sigma = (
        sigma_from_gradients(*net.support_gradients(x1, x2, x3, y1)) if fusion == "meta" else None
    )
    if sigma is not None:
        assert sigma.shape == (net.sigma_dim,)
    out = net(x1, x2, x3, sigma=sigma)
    for s in (out.s1, out.s2, out.s3, out.s):
        assert s.shape == (2, NC, PATCH, PATCH)
    loss = sum(F.cross_entropy(s, y1, ignore_index=255) for s in (out.s1, out.s2, out.s3, out.s))
    loss.backward()
    for part in (*net.memory_recall.values(), net.fusion):
        _finite_grads(part)
    for name, p in net.meta_branch.named_parameters():
        assert "aux" in name or p.grad is not None, name


def test_msn_eval_deterministic_and_stored_sigma() -> None:
    torch.manual_seed(0)
    net = MSN(MSNConfig(backbone="unet", width=WIDTH, num_classes=NC, patch_size=32)).eval()
    x1, x2, x3 = (torch.randn(2, 3, 32, 32) for _ in range(3))
    y1 = torch.randint(0, NC, (2, 32, 32))
    with pytest.raises(ValueError, match="stored"):
        net(x1, x2, x3)
    sigma = sigma_from_gradients(*net.support_gradients(x1, x2, x3, y1))
    net.store_sigma(sigma)
    with torch.no_grad():
        a, b, c = net(x1, x2, x3), net(x1, x2, x3), net(x1, x2, x3, sigma=sigma)
    torch.testing.assert_close(a.s, b.s, rtol=0, atol=0)
    torch.testing.assert_close(a.s, c.s)
    state = net.state_dict()
    assert bool(state["fusion.has_stored"])
    fresh = MSN(net.config).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x1, x2, x3).s, a.s)


def test_branch_needs_memory() -> None:
    net = MSN(MSNConfig(backbone="bisenet", width=WIDTH, num_classes=NC, patch_size=PATCH))
    with pytest.raises(ValueError, match="meta-features"):
        net.branch(torch.zeros(1, 3, PATCH, PATCH), "x1")
    with pytest.raises(ValueError, match="x1"):
        net.branch(torch.zeros(1, 3, PATCH, PATCH), "x4", memory={})
