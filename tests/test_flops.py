"""Multiply-add counter: exact on hand-computed layers, and faithful to the DeepLab
model zoo's figures (TF release, g3doc/model_zoo.md) within 5%.

All zoo checks build the models on the meta device, so a 1025x2049 Xception-65
costs shapes only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from deeplab.hub import create_model
from deeplab.models.flops import count_multiply_adds, count_parameters, model_table

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def test_counts_conv_and_linear_exactly():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 8x8 -> 4x4
            self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            y = self.dw(self.conv(x))
            return self.fc(y.mean(dim=(2, 3)))

    model = Tiny()
    expected = 4 * 4 * 8 * (3 * 3 * 3) + 4 * 4 * 8 * 9 + 8 * 5
    assert count_multiply_adds(model, (8, 8)) == expected
    assert count_multiply_adds(model, (8, 8), batch=3) == 3 * expected
    assert count_parameters(model) == (8 * 27 + 8) + (8 * 9 + 8) + (8 * 5 + 5)
    # The model's mode is restored and the hooks are gone.
    model.train()
    count_multiply_adds(model, (8, 8))
    assert model.training and not model.conv._forward_hooks


@pytest.mark.slow
def test_meta_counts_equal_real_counts():
    real = create_model("deeplabv3plus_mobilenetv2", num_classes=5)
    meta = _meta("deeplabv3plus_mobilenetv2", num_classes=5)
    assert count_multiply_adds(real, (65, 65)) == count_multiply_adds(meta, (65, 65))
    assert count_parameters(real) == count_parameters(meta)


# Model-zoo figures: (model, options, input size, multiply-adds in billions).
# MobileNetV2 width 0.5 only lands within 1.5% because DeepLab's TF extractor rounds
# its channels to integers (24 * 0.5 -> 12), not to multiples of 8 as torchvision does
# (16 channels there would give 0.91B, +3.4%).
ZOO = [
    ("deeplabv3_mobilenetv2", {}, (513, 513), 2.75),
    ("deeplabv3_mobilenetv2", {"width_mult": 0.5}, (513, 513), 0.88),
    ("deeplabv3_mobilenetv2", {"num_classes": 19}, (1025, 2049), 21.27),
    ("deeplabv3plus_xception65", {}, (513, 513), 54.17),
    ("deeplabv3plus_xception65", {"num_classes": 19}, (1025, 2049), 418.64),
]


@pytest.mark.parametrize(("name", "options", "size", "billions"), ZOO)
def test_multiply_adds_match_model_zoo(name, options, size, billions):
    model = _meta(name, output_stride=16, **options)
    count = count_multiply_adds(model, size) / 1e9
    assert count == pytest.approx(billions, rel=0.05)


def test_zoo_xception65_uses_separable_aspp_and_decoder():
    # The zoo figure needs the separable ASPP and decoder: regular 3x3 convs cost ~2x.
    separable = count_multiply_adds(_meta("deeplabv3plus_xception65"), (513, 513))
    regular = count_multiply_adds(_meta("deeplabv3plus_xception65", separable=False), (513, 513))
    assert regular > 1.5 * separable


def test_output_stride_8_costs_more():
    model = _meta("deeplabv3_resnet101")
    at16 = count_multiply_adds(model, (513, 513))
    model.set_output_stride(8)
    at8 = count_multiply_adds(model, (513, 513))
    # layer3's 23 units run on 4x more positions at OS 8 (DeepLab-v3, sec. 3.2).
    assert 2.5 * at16 < at8 < 4 * at16


@pytest.mark.slow
def test_model_table_lists_every_model():
    from deeplab.models import list_models

    table = model_table(size=(257, 257), output_stride=16, num_classes=21)
    lines = table.splitlines()
    assert "params (M)" in lines[0] and "257x257" in lines[0]
    for name in list_models():
        (row,) = [line for line in lines if line.split()[:1] == [name]]
        os, params, madds = row.split()[1:]
        assert os == ("8" if "vgg16" in name else "16")
        assert float(params) > 0 and float(madds) > 0
    mnv2 = next(line for line in lines if line.startswith("deeplabv3_mobilenetv2 "))
    assert float(mnv2.split()[2]) == pytest.approx(2.11, abs=0.01)  # 2.11M parameters
