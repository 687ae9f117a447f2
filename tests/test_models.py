"""Every registered DeepLab model: forward, backward, shapes, output stride switch,
batch-1 training, align_corners, v2 multi-scale; plus the atrous bookkeeping of
each backbone and head checked against the papers' rates.

Inputs are tiny (33x33 odd, 40x56 even) so the file runs in about 30 s of CPU
time; structural checks build models on the meta device.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn as nn

from deeplab.hub import create_model
from deeplab.models import build_model, list_models
from deeplab.models.backbones import VGG16, MobileNetV2, ResNet, Xception
from deeplab.models.layers import SingleValueBatchNorm2d, atrous_schedule, scale_rates

NUM_CLASSES = 3
ODD, EVEN = (33, 33), (40, 56)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_and_fresh_models(one_thread):
    yield
    _built.cache_clear()


# The big backbones (ResNet-101, Xception) take seconds per test on 2 cores: `make test`
# runs them, `make test-fast` leaves them out.
HEAVY = ("resnet101", "xception")
MODELS = [pytest.param(n, marks=pytest.mark.slow) if any(h in n for h in HEAVY) else n
          for n in list_models()]  # fmt: skip


def _allowed_strides(name: str) -> tuple[int, ...]:
    return (8,) if "vgg16" in name else (8, 16, 32)


@functools.cache
def _built(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, **options)


def _model(name: str, **options) -> nn.Module:
    """A fresh copy of the model (building ResNet-101 costs more than copying it)."""
    return copy.deepcopy(_built(name, **options))


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_every_required_variant():
    required = {
        "deeplabv1_vgg16_largefov",
        "deeplabv2_vgg16",
        "deeplabv2_resnet101",
        "deeplabv3_resnet50",
        "deeplabv3_resnet101",
        "deeplabv3_mobilenetv2",
        "deeplabv3plus_resnet101",
        "deeplabv3plus_xception65",
        "deeplabv3plus_xception71",
        "deeplabv3plus_mobilenetv2",
    }
    assert required <= set(list_models())


@pytest.mark.parametrize("name", MODELS)
def test_batch1_training_step_reaches_first_conv(name):
    # Batch 1 in train mode: the image pooling BN sees one value per channel.
    model = _model(name).train()
    x = torch.randn(1, 3, *ODD)
    logits = model(x)
    assert logits.shape == (1, NUM_CLASSES, *ODD)
    target = torch.randint(0, NUM_CLASSES, (1, *ODD))
    loss = nn.functional.cross_entropy(logits, target)
    loss.backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert model.num_classes == NUM_CLASSES


@pytest.mark.parametrize("name", MODELS)
def test_eval_shapes_and_output_stride_switch(name):
    model = _model(name).eval()
    x_odd, x_even = torch.randn(1, 3, *ODD), torch.randn(2, 3, *EVEN)
    with torch.no_grad():
        before = model(x_odd)
        assert before.shape == (1, NUM_CLASSES, *ODD)
        assert model(x_even).shape == (2, NUM_CLASSES, *EVEN)
        default = model.output_stride
        for os in _allowed_strides(name):
            model.set_output_stride(os)
            assert model.output_stride == os
            out = model.backbone(x_even)["out"]
            assert out.shape[-2:] == (math.ceil(EVEN[0] / os), math.ceil(EVEN[1] / os))
            assert model.backbone(x_even)["low"].shape[-2:] == (10, 14)  # stride 4
            assert model(x_odd).shape == (1, NUM_CLASSES, *ODD)
        # Switching back restores exactly the same function: weights were kept.
        model.set_output_stride(default)
        torch.testing.assert_close(model(x_odd), before)
    if _allowed_strides(name) == (8,):
        with pytest.raises(ValueError, match="output stride 8"):
            model.set_output_stride(16)


@pytest.mark.parametrize("name", list_models())
def test_fresh_model_starts_near_uniform_class_scores(name):
    # Class-score layers start at std 0.01 (TF's logits initialiser): the first loss is
    # close to ln(num_classes) (He-initialised scores gave 1.6x to 47x it). v2 ResNet-101
    # sits highest (~1.4x): its four 3x3 classifiers read the unnormalised 2048-channel
    # block4 output directly and their scores are summed.
    model = _model(name).train()
    x, target = torch.randn(2, 3, *EVEN), torch.randint(0, NUM_CLASSES, (2, *EVEN))
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), target)
    assert loss.item() < 1.5 * math.log(NUM_CLASSES), loss.item()


@pytest.mark.parametrize("name", MODELS)
def test_align_corners_false_changes_only_the_resizes(name):
    aligned = _model(name).eval()
    model = create_model(name, num_classes=NUM_CLASSES, align_corners=False).eval()
    model.load_state_dict(aligned.state_dict())
    x = torch.randn(1, 3, *EVEN)
    with torch.no_grad():
        out, ref = model(x), aligned(x)
    assert out.shape == ref.shape == (1, NUM_CLASSES, *EVEN)
    # Relative comparison: freshly initialised class scores are tiny (std 0.01 weights).
    assert not torch.allclose(out, ref, rtol=1e-3, atol=0)


def test_v2_multi_scale_fuses_scales_by_max():
    model = _model("deeplabv2_vgg16", multi_scale=True).eval()
    assert model.scales == (1.0, 0.75, 0.5)
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        fused = model(x)
        per_scale = []
        for s in model.scales:
            size = [int((d - 1) * s + 1) for d in ODD]  # 33 -> 33, 25, 17
            xs = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True)
            per_scale.append(model.scores(xs, ODD))
    assert fused.shape == (1, NUM_CLASSES, *ODD)
    torch.testing.assert_close(fused, torch.stack(per_scale).amax(0))
    assert not torch.allclose(fused, per_scale[0])
    # One tensor in train mode too (no per-scale list).
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, NUM_CLASSES, *ODD)


# --- atrous bookkeeping against the papers -------------------------------------------


def _rates(convs) -> list[int]:
    return [c.dilation[0] for c in convs]


def test_resnet_multi_grid_rates_follow_deeplabv3():
    with torch.device("meta"):
        net = ResNet(depth=101, output_stride=16, multi_grid=(1, 2, 4))
    # block4 rates = 2 * (1, 2, 4) at OS 16 (DeepLab-v3, sec. 3.2).
    assert _rates(u.conv2 for u in net.layer4) == [2, 4, 8]
    assert [u.conv2.stride[0] for u in net.layer4] == [1, 1, 1]
    assert net.layer3[0].conv2.stride == (2, 2)
    net.set_output_stride(8)
    assert _rates(u.conv2 for u in net.layer4) == [4, 8, 16]
    assert _rates(u.conv2 for u in net.layer3) == [1] + [2] * 22
    assert net.layer3[0].conv2.stride == (1, 1) and net.layer3[0].downsample[0].stride == (1, 1)
    net.set_output_stride(32)
    assert _rates(u.conv2 for u in net.layer4) == [1, 2, 4]
    assert net.layer4[0].conv2.stride == (2, 2)


def test_resnet_without_multi_grid_matches_torchvision_dilation():
    with torch.device("meta"):
        net = ResNet(depth=50, output_stride=8)
    assert _rates(u.conv2 for u in net.layer3) == [1, 2, 2, 2, 2, 2]
    assert _rates(u.conv2 for u in net.layer4) == [2, 4, 4]


def test_beta_stem_is_three_convs():
    with torch.device("meta"):
        net = ResNet(depth=50, beta_stem=True)
    convs = [m for m in net.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (64, (3, 3), (2, 2)),
        (64, (3, 3), (1, 1)),
        (128, (3, 3), (1, 1)),
    ]
    assert net.layer1[0].conv1.in_channels == 128


def test_atrous_schedule_follows_tf_stack_blocks_dense():
    strides = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]  # MobileNetV2 blocks
    plan = atrous_schedule(strides, input_stride=2, output_stride=16)
    # features.14 (index 13) loses its stride and keeps rate 1; the later blocks use rate 2.
    assert plan[13] == (1, 1) and plan[14:] == [(1, 2)] * 3
    assert [s for s, _ in plan[:13]] == strides[:13]
    plan8 = atrous_schedule(strides, input_stride=2, output_stride=8)
    assert plan8[6] == (1, 1) and plan8[7:14] == [(1, 2)] * 7
    assert plan8[14:] == [(1, 4)] * 3
    with pytest.raises(ValueError, match="cannot be reached"):
        atrous_schedule([2, 2], input_stride=2, output_stride=16)


def test_aspp_rates_scale_with_output_stride():
    assert scale_rates((6, 12, 18), defined_at=16, output_stride=16) == (6, 12, 18)
    assert scale_rates((6, 12, 18), defined_at=16, output_stride=8) == (12, 24, 36)
    assert scale_rates((6, 12, 18), defined_at=16, output_stride=32) == (3, 6, 9)
    with torch.device("meta"):
        model = create_model("deeplabv3_resnet50")
    atrous = model.head.aspp.atrous
    assert _rates(b[0] for b in atrous) == [6, 12, 18]
    model.set_output_stride(8)
    assert _rates(b[0] for b in atrous) == [12, 24, 36]
    assert _rates(u.conv2 for u in model.backbone.layer4) == [4, 8, 16]


def test_v1_and_v2_heads():
    with torch.device("meta"):
        v1 = create_model("deeplabv1_vgg16_largefov")
        v2 = create_model("deeplabv2_vgg16")
        v2r = create_model("deeplabv2_resnet101")
    (fc,) = v1.head.branches
    assert (fc.fc6.kernel_size, fc.fc6.dilation, fc.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert fc.fc7.out_channels == 1024 and fc.fc8.out_channels == 21
    assert [b.fc6.dilation[0] for b in v2.head.branches] == [6, 12, 18, 24]
    assert [b.fc.dilation[0] for b in v2r.head.branches] == [6, 12, 18, 24]
    assert all(b.fc.out_channels == 21 for b in v2r.head.branches)
    assert v2r.output_stride == 8


def test_vgg16_atrous_layout():
    with torch.device("meta"):
        net = VGG16()
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    pool_specs = [(p.kernel_size, p.stride, p.padding) for p in pools]
    assert pool_specs == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2  # pool4, pool5 at stride 1
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert _rates(convs) == [1] * 10 + [2] * 3
    # torchvision's vgg16().features indices, so ImageNet weights load by name.
    assert [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)] == [
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28,
    ]  # fmt: skip


def test_xception_layouts():
    with torch.device("meta"):
        x65, x71 = Xception(depth=65), Xception(depth=71)
        tf_x65 = Xception(depth=65, relu_after_depthwise=False)
        feats = x65(torch.zeros(1, 3, 65, 65, device="meta"))
    assert (len(x65.entry_flow), len(x65.middle_flow), len(x65.exit_flow)) == (3, 16, 2)
    assert (len(x71.entry_flow), len(x71.middle_flow)) == (5, 16)
    assert feats["low"].shape == (1, 256, 17, 17) and feats["out"].shape == (1, 2048, 5, 5)
    # Paper form: BN + ReLU after every depthwise conv.
    assert all(isinstance(u.sepconv[0].depthwise[2], nn.ReLU) for u in x65.middle_flow)
    # TF form: linear separable convs (pre-activation) except the last exit-flow unit.
    assert len(tf_x65.middle_flow[0].sepconv[0].depthwise) == 2
    assert isinstance(tf_x65.exit_flow[1].sepconv[0].depthwise[2], nn.ReLU)
    # At OS 16 the exit flow runs at stride 1: block1 rate 1, block2 rate 2.
    assert x65.exit_flow[0].sepconv[2].depthwise[0].stride == (1, 1)
    assert x65.exit_flow[1].sepconv[0].depthwise[0].dilation == (2, 2)


def test_mobilenetv2_channels_follow_tf_deeplab():
    with torch.device("meta"):
        w1, w05 = MobileNetV2(width_mult=1.0), MobileNetV2(width_mult=0.5)
        zoo05 = create_model("deeplabv3_mobilenetv2", width_mult=0.5)
    assert (w1.out_channels, w1.low_channels) == (320, 24)
    assert len(w1.features) == 18
    # DeepLab's TF extractor rounds to integers below width 1.0 (24 * 0.5 -> 12).
    widths = [b.conv[-1].num_features for b in w05.features[1:]]
    assert widths[:3] == [8, 12, 12] and w05.out_channels == 160
    assert zoo05.head.aspp.project[0].out_channels == 256  # the head keeps 256 channels
    assert len(zoo05.head.aspp.atrous) == 0


def test_single_value_batchnorm_uses_running_stats_at_batch_one():
    bn = SingleValueBatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
    x = torch.randn(1, 4, 1, 1)
    out = bn.train()(x)
    expected = (x - bn.running_mean.view(1, 4, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, 4, 1, 1) + bn.eps
    )
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bn.running_mean, torch.tensor([0.5, -1.0, 2.0, 0.0]))
    # Two values per channel: ordinary batch statistics, running stats updated.
    out2 = bn(torch.randn(2, 4, 1, 1))
    torch.testing.assert_close(out2.mean(0).flatten(), torch.zeros(4), atol=1e-5, rtol=0)
    assert not torch.allclose(bn.running_mean, torch.tensor([0.5, -1.0, 2.0, 0.0]))


@pytest.mark.slow
def test_v3plus_resnet101_is_separable_and_old_checkpoints_load_as_built(tmp_path):
    """The TF release builds v3+ with separable ASPP and decoder; a checkpoint written before
    that default (its options without 'separable') still builds with regular convs."""
    from deeplab.checkpoint import ModelInfo, best_state, model_from_checkpoint, save

    new = build_model("deeplabv3plus_resnet101", num_classes=3)
    assert new.build_spec["options"]["separable"] is True  # every option is recorded
    regular = build_model("deeplabv3plus_resnet101", num_classes=3, separable=False)
    assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in regular.parameters())
    old_info = ModelInfo(arch="deeplabv3plus_resnet101",
                         options={"num_classes": 3, "output_stride": 16},  # as 0.1.0 wrote it
                         class_names=("a", "b", "c"), mean=(0.0,) * 3, std=(1.0,) * 3)  # fmt: skip
    path = save(tmp_path / "old.pt", best_state(model=regular, step=1, config={}, info=old_info,
                                                metrics={}))  # fmt: skip
    loaded, _ = model_from_checkpoint(path)
    assert loaded.build_spec["options"]["separable"] is False
    for key, value in regular.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
