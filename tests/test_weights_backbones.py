"""ImageNet weights in published key layouts load into our backbones, with a full report.

The synthetic state_dicts are generated from the published layouts (torchvision's
ResNet and MobileNetV2 definitions: block counts, widths, key names), not from
our modules, so a drift in our naming makes these tests fail.
"""

from __future__ import annotations

import pytest
import torch

from deeplab.hub import create_model
from deeplab.models.backbones.mobilenet import MobileNetV2
from deeplab.models.backbones.resnet import ResNet
from deeplab.weights import get_entry, load_backbone_state_dict, read_state_dict

# --- published layouts --------------------------------------------------------------


def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(c) + 0.5,
        f"{prefix}.bias": torch.randn(c),
        f"{prefix}.running_mean": torch.randn(c),
        f"{prefix}.running_var": torch.rand(c) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(0),
    }


def torchvision_resnet(depth: int) -> dict[str, torch.Tensor]:
    """torchvision.models.resnet{50,101}: Bottleneck v1.5, expansion 4, fc to 1000 classes."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    sd = {"conv1.weight": torch.randn(64, 3, 7, 7), **_bn("bn1", 64)}
    in_c = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), start=1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            sd[f"{p}.conv1.weight"] = torch.randn(width, in_c, 1, 1)
            sd.update(_bn(f"{p}.bn1", width))
            sd[f"{p}.conv2.weight"] = torch.randn(width, width, 3, 3)
            sd.update(_bn(f"{p}.bn2", width))
            sd[f"{p}.conv3.weight"] = torch.randn(width * 4, width, 1, 1)
            sd.update(_bn(f"{p}.bn3", width * 4))
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = torch.randn(width * 4, in_c, 1, 1)
                sd.update(_bn(f"{p}.downsample.1", width * 4))
            in_c = width * 4
    sd["fc.weight"] = torch.randn(1000, 2048)
    sd["fc.bias"] = torch.randn(1000)
    return sd


# MobileNetV2 paper, Table 2: expansion t, channels c, repeats n, stride s.
_MNV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
         (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def torchvision_mobilenet_v2() -> dict[str, torch.Tensor]:
    """torchvision.models.mobilenet_v2 (width 1.0): nested Conv2dNormActivation blocks."""
    sd = {"features.0.0.weight": torch.randn(32, 3, 3, 3), **_bn("features.0.1", 32)}
    in_c, index = 32, 1
    for t, c, n, _ in _MNV2:
        for _ in range(n):
            hidden, p = in_c * t, f"features.{index}.conv"
            if t == 1:
                sd[f"{p}.0.0.weight"] = torch.randn(hidden, 1, 3, 3)
                sd.update(_bn(f"{p}.0.1", hidden))
                sd[f"{p}.1.weight"] = torch.randn(c, hidden, 1, 1)
                sd.update(_bn(f"{p}.2", c))
            else:
                sd[f"{p}.0.0.weight"] = torch.randn(hidden, in_c, 1, 1)
                sd.update(_bn(f"{p}.0.1", hidden))
                sd[f"{p}.1.0.weight"] = torch.randn(hidden, 1, 3, 3)
                sd.update(_bn(f"{p}.1.1", hidden))
                sd[f"{p}.2.weight"] = torch.randn(c, hidden, 1, 1)
                sd.update(_bn(f"{p}.3", c))
            in_c, index = c, index + 1
    sd["features.18.0.weight"] = torch.randn(1280, 320, 1, 1)
    sd.update(_bn("features.18.1", 1280))
    sd["classifier.1.weight"] = torch.randn(1000, 1280)
    sd["classifier.1.bias"] = torch.randn(1000)
    return sd


# --- tests --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_resnet_loads_completely(depth):
    sd = torchvision_resnet(depth)
    backbone = ResNet(depth=depth, output_stride=16)
    report = load_backbone_state_dict(backbone, sd)
    assert report.ok and report.layout == "torchvision-resnet"
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert torch.equal(backbone.state_dict()["layer3.5.conv2.weight"], sd["layer3.5.conv2.weight"])
    down_bn = backbone.layer1[0].downsample[1]
    assert torch.equal(down_bn.running_var, sd["layer1.0.downsample.1.running_var"])


def test_resnet_weights_survive_output_stride_change():
    sd = torchvision_resnet(50)
    backbone = ResNet(depth=50, output_stride=8)
    load_backbone_state_dict(backbone, sd)
    backbone.set_output_stride(16)
    assert torch.equal(backbone.layer4[0].conv2.weight, sd["layer4.0.conv2.weight"])


def test_torchvision_mobilenet_v2_loads_and_drops_last_conv():
    sd = torchvision_mobilenet_v2()
    backbone = MobileNetV2(width_mult=1.0)
    report = load_backbone_state_dict(backbone, sd)
    assert report.ok and report.layout == "torchvision-mobilenetv2"
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.ignored} == {
        "features.18", "classifier.1",
    }  # fmt: skip
    assert torch.equal(backbone.features[5].conv[1][0].weight, sd["features.5.conv.1.0.weight"])


def test_real_imagenet_mobilenet_v2_file(weights_dir):
    path = weights_dir / get_entry("mobilenet_v2_imagenet").file_name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    sd = read_state_dict(path)
    backbone = MobileNetV2(width_mult=1.0, output_stride=16)
    report = load_backbone_state_dict(backbone, sd)
    assert report.ok, str(report)
    assert report.layout == "flat-mobilenetv2"
    ignored_modules = sorted({k.rsplit(".", 1)[0] for k in report.ignored})
    assert ignored_modules == ["features.18.0", "features.18.1"]
    # Flat block 2: conv.3 = depthwise conv, conv.7 = projection BN in torchvision's nesting.
    assert torch.equal(backbone.features[2].conv[1][0].weight, sd["features.2.conv.3.weight"])
    project_bn = backbone.features[2].conv[3]
    assert torch.equal(project_bn.running_mean, sd["features.2.conv.7.running_mean"])
    assert torch.equal(backbone.features[1].conv[1].weight, sd["features.1.conv.3.weight"])
    # Real ImageNet statistics, not an init: BN variances differ from 1 everywhere.
    assert not torch.allclose(backbone.features[17].conv[3].running_var, torch.ones(320))


def test_backbone_entry_through_create_model(weights_dir, monkeypatch):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    if not (weights_dir / "mobilenet_v2_imagenet.pt").is_file():
        pytest.skip("mobilenet_v2_imagenet.pt not found")
    model = create_model(
        "deeplabv3plus_mobilenetv2", pretrained="mobilenet_v2_imagenet", num_classes=11
    )
    sd = read_state_dict(weights_dir / "mobilenet_v2_imagenet.pt")
    assert model.num_classes == 11
    assert torch.equal(model.backbone.features[0][0].weight, sd["features.0.0.weight"])
    x = torch.randn(1, 3, 65, 65)
    assert model.eval()(x).shape == (1, 11, 65, 65)


def test_missing_and_mismatched_keys_are_errors_by_default():
    sd = torchvision_resnet(50)
    del sd["layer2.1.bn2.weight"]
    sd["layer4.2.conv3.weight"] = torch.randn(2048, 256, 1, 1)  # should be 512 in
    sd["layer5.0.conv1.weight"] = torch.randn(1)
    backbone = ResNet(depth=50)
    before = backbone.layer1[0].conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_backbone_state_dict(backbone, sd)
    msg = str(err.value)
    assert "layer2.1.bn2.weight" in msg and "layer4.2.conv3.weight" in msg and "layer5" in msg
    assert torch.equal(backbone.layer1[0].conv1.weight, before)  # nothing loaded on error

    report = load_backbone_state_dict(backbone, sd, strict=False)
    assert report.missing == ["layer2.1.bn2.weight", "layer4.2.conv3.weight"]
    assert report.unexpected == ["layer5.0.conv1.weight"]
    assert report.mismatched == [("layer4.2.conv3.weight", (2048, 256, 1, 1), (2048, 512, 1, 1))]
    assert torch.equal(backbone.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_wrapper_prefix_is_stripped():
    sd = {f"module.{k}": v for k, v in torchvision_resnet(50).items()}
    assert load_backbone_state_dict(ResNet(depth=50), sd).ok


def test_checkpoint_dict_is_unwrapped_and_garbage_is_named(tmp_path):
    torch.save({"model": {"a": torch.ones(1)}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert list(read_state_dict(tmp_path / "ckpt.pt")) == ["a"]
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.pt"):
        read_state_dict(tmp_path / "bad.pt")
