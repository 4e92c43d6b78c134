"""PoseClassifier / PoseRegressor (torchvision backbones, weights=None) and the regression target maps."""

import socket

import pytest
import torch

from gpumosaic.models import PoseClassifier, PoseRegressor, build_backbone, denormalise, normalise_targets


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (e.g. a weight download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def alexnet_classifier():
    torch.manual_seed(0)
    return PoseClassifier(num_classes=7, backbone="alexnet")


def test_classifier_shape_and_backward(alexnet_classifier):
    net = alexnet_classifier
    x = torch.rand(2, 3, 220, 220)
    logits = net(x)
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # AlexNet's features at 220x220 are 256x5x5, adaptively pooled to the 6x6 its head expects.
    assert net.net.features(x[:1]).shape == (1, 256, 5, 5)
    assert net.net.classifier[6].out_features == 7
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 6]))
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.net.classifier[6].weight.grad.abs().sum() > 0
    net.zero_grad()


def test_input_normalisation(alexnet_classifier):
    """normalise_input applies the ImageNet mean/std before the torchvision network."""
    net = alexnet_classifier.eval()
    x = torch.rand(1, 3, 220, 220)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.net((x - mean) / std))
    net.train()


def test_regressor_shape_range_backward():
    torch.manual_seed(1)
    net = PoseRegressor(num_joints=3, backbone="alexnet")
    out = net(torch.rand(2, 3, 220, 220))
    assert out.shape == (2, 15)
    assert torch.isfinite(out).all() and (out.abs() < 1).all()
    pose2d, pose3d = net.predict(torch.rand(2, 3, 220, 220))
    assert pose2d.shape == (2, 3, 2) and pose3d.shape == (2, 3, 3)
    target = torch.rand(2, 15) * 2 - 1
    torch.nn.functional.mse_loss(out, target).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_vgg16_shapes():
    torch.manual_seed(2)
    net = PoseClassifier(num_classes=5, backbone="vgg16").eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 220, 220)
        assert net.net.features(x[:1]).shape == (1, 512, 6, 6)
        out = net(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_pretrained_from_local_state_dict(tmp_path):
    """A local torchvision state dict is loaded (last layer replaced); True never downloads."""
    torch.manual_seed(3)
    src = build_backbone("alexnet", 1000)
    path = tmp_path / "alexnet.pth"
    torch.save(src.state_dict(), path)
    net = PoseClassifier(num_classes=4, pretrained=path)
    torch.testing.assert_close(net.net.features[0].weight, src.features[0].weight)
    assert net.net.classifier[6].out_features == 4
    with pytest.raises(ValueError, match="never downloads"):
        PoseClassifier(num_classes=4, pretrained=True)


def test_exceptions():
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("resnet50", 10)
    with pytest.raises(ValueError, match="num_outputs"):
        build_backbone("alexnet", 0)
    with pytest.raises(ValueError, match="num_joints"):
        PoseRegressor(num_joints=0)
    with pytest.raises(ValueError, match="targets"):
        denormalise(torch.zeros(2, 14), num_joints=3)
    with pytest.raises(ValueError, match="extent_m"):
        normalise_targets(torch.zeros(1, 3, 2), torch.zeros(1, 3, 3), extent_m=0)


def test_normalise_targets_reference_and_round_trip(device):
    g = torch.Generator().manual_seed(4)
    size, extent = 220, 1.3
    pose2d = (torch.rand(5, 14, 2, generator=g) * 240 - 10).to(device)
    pose3d = (torch.randn(5, 14, 3, generator=g) * 0.5).to(device)
    p2_before, p3_before = pose2d.clone(), pose3d.clone()
    t = normalise_targets(pose2d, pose3d, size=size, extent_m=extent)
    assert t.shape == (5, 70) and t.device == pose2d.device
    # Reference: plain loops over samples and joints.
    for b in range(5):
        for j in range(14):
            for c in range(2):
                want = (pose2d[b, j, c].item() - (size - 1) / 2) / (size / 2)
                assert abs(t[b, 2 * j + c].item() - want) < 1e-5
            for c in range(3):
                assert abs(t[b, 28 + 3 * j + c].item() - pose3d[b, j, c].item() / extent) < 1e-6
    # The box edges map to -1 and +1, its centre to 0.
    edges = torch.tensor([[[-0.5, size - 0.5], [(size - 1) / 2, (size - 1) / 2]]], device=device)
    te = normalise_targets(edges, torch.zeros(1, 2, 3, device=device), size=size)
    torch.testing.assert_close(te[0, :4], torch.tensor([-1.0, 1.0, 0.0, 0.0], device=device))
    q2, q3 = denormalise(t, 14, size=size, extent_m=extent)
    torch.testing.assert_close(q2, pose2d, atol=1e-4, rtol=0)
    torch.testing.assert_close(q3, pose3d, atol=1e-6, rtol=1e-6)
    assert torch.equal(pose2d, p2_before) and torch.equal(pose3d, p3_before)  # inputs untouched
