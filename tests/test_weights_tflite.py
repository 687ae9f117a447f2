"""Google's DeepLab TFLite models converted to PyTorch agree with Google's own interpreter.

Real photos (CamVid val frames and the VOC photos of the labelme example),
resized to each model's input size, go through the converted model and
through ``ai-edge-litert`` (tests/_helpers/tflite_reference.py). Agreement targets:

- float model (deeplabv3_257_mv_gpu): argmax equal on >= 99.9% of pixels and
  logits within 1e-3 absolute (logits span about +-30; measured max diff ~5e-5);
- 8-bit models: argmax equal on >= 99% of all pixels of the photos (the
  interpreter computes in integers with 8-bit activations, the converted model
  in float32 on the dequantized weights), and every disagreeing pixel is a
  near-tie for our model: top-2 logit margin < 1.0, i.e. within about five
  quantization steps of the graph's logits (scale ~0.2). A mapping error
  would show as confident disagreements.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _helpers.tflite_reference import require, run_reference
from PIL import Image

from deeplab.hub import create_model
from deeplab.weights import get_entry
from deeplab.weights.tflite_import import dequantize, read_deeplab, read_ops

require("tflite", "tflite")  # the flatbuffer reader; under CI its absence is a failure

CAMVID_VAL = ("0016E5_07959.png", "0016E5_08159.png")
VOC_PHOTOS = ("2011_000003.jpg", "2011_000006.jpg", "2011_000025.jpg")
ENTRIES = (
    "deeplabv3_257_mv_gpu",
    "deeplabv3_mnv2_pascal_quant",
    "deeplabv3_mnv2_dm05_pascal_quant",
)


@pytest.fixture(scope="module")
def photos(shared):
    paths = [shared / "data" / "camvid" / "val" / n for n in CAMVID_VAL]
    paths += [shared / "data" / "labelme_voc_example" / n for n in VOC_PHOTOS]
    for p in paths:
        if not p.is_file():
            pytest.skip(f"{p} not found")
    return [Image.open(p).convert("RGB") for p in paths]


def tflite_path(weights_dir, name):
    path = weights_dir / get_entry(name).file_name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def load_tflite(path):
    """The converted model, with the options read from the file."""
    return create_model("deeplabv3_mobilenetv2", pretrained=str(path))


def to_input(image: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTRIES)
def test_converted_model_matches_tflite_interpreter(name, weights_dir, photos):
    entry = get_entry(name)
    path = tflite_path(weights_dir, name)
    model = load_tflite(path).eval()
    h, w = entry.input_size
    agree, total, margins = 0, 0, []
    for photo in photos:
        image = np.asarray(photo.resize((w, h), Image.BILINEAR))
        ref = run_reference(path, image)["output"]
        with torch.no_grad():
            logits = model(to_input(image, entry.mean, entry.std))[0]
        pred = logits.argmax(0).numpy()
        if ref.ndim == 3:  # float graph: [H, W, classes] logits
            ours = logits.permute(1, 2, 0).numpy()
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)
            ref = ref.argmax(-1)
        differ = pred != ref
        top2 = logits.topk(2, dim=0).values.numpy()
        margins.append((top2[0] - top2[1])[differ])
        agree += int((~differ).sum())
        total += differ.size
    floor = 0.99 if name.endswith("_quant") else 0.999
    assert agree / total >= floor, f"{name}: {agree / total:.4%} of pixels agree"
    margins = np.concatenate(margins)
    assert margins.size == 0 or margins.max() < 1.0, f"confident disagreement: {margins.max()}"
    assert len(np.unique(pred)) > 1  # not a trivial all-background agreement


@pytest.mark.parametrize("name", ENTRIES)
def test_graph_facts_match_the_zoo_entry(name, weights_dir):
    entry = get_entry(name)
    graph = read_deeplab(tflite_path(weights_dir, name))
    assert graph.input_size == entry.input_size
    assert graph.output_stride == entry.output_stride
    assert graph.width_mult == entry.options["width_mult"]
    assert graph.num_classes == entry.num_classes == len(entry.class_names)
    assert (graph.input_mean, graph.input_std) == (entry.mean[0], entry.std[0])
    # 17 MobileNetV2 units (the first without expansion) + stem + 4 head convs.
    assert len(graph.convs) == 1 + 2 + 16 * 3 + 4


def test_resize_ops_use_align_corners(weights_dir):
    ops = read_ops(tflite_path(weights_dir, "deeplabv3_257_mv_gpu"))
    resizes = [op for op in ops if op.kind == "RESIZE_BILINEAR"]
    assert resizes and all(op.options["align_corners"] for op in resizes)
    assert create_model("deeplabv3_mobilenetv2", width_mult=0.5).align_corners


def test_batch_norm_restored_as_identity_plus_bias(weights_dir):
    path = tflite_path(weights_dir, "deeplabv3_257_mv_gpu")
    graph = read_deeplab(path)
    model = load_tflite(path)
    modules = dict(model.named_modules())
    bn = modules["backbone.features.2.conv.1.1"]  # expanded_conv_1/depthwise
    conv = modules["backbone.features.2.conv.1.0"]
    tf = graph.convs["MobilenetV2/expanded_conv_1/depthwise"]
    assert conv.bias is None
    assert torch.equal(conv.weight, tf.weight) and torch.equal(bn.bias, tf.bias)
    assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)
    torch.testing.assert_close(torch.sqrt(bn.running_var + bn.eps), torch.ones_like(bn.bias))
    # Depthwise [1, h, w, C] became [C, 1, h, w]: channel 5's kernel is TF's [0, :, :, 5].
    convs = [op for op in read_ops(path) if op.kind.endswith("CONV_2D")]
    weights = {op.inputs[1].name: op.inputs[1].data for op in convs}
    raw = weights["MobilenetV2/expanded_conv_1/depthwise/depthwise_weights"]
    np.testing.assert_array_equal(conv.weight[5, 0].detach().numpy(), raw[0, :, :, 5])


def test_dequantize_per_tensor_and_per_channel():
    q = np.array([[0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, [0.5], [128]), (q.astype(float) - 128) * 0.5)
    per_row = dequantize(q, [0.5, 2.0], [128, 0], axis=0)
    np.testing.assert_allclose(per_row[0], (q[0] - 128.0) * 0.5)
    np.testing.assert_allclose(per_row[1], q[1] * 2.0)
    with pytest.raises(ValueError, match="3 scales"):
        dequantize(q, [1.0, 1.0, 1.0], [0], axis=0)


def test_fine_tuning_after_import_trains(weights_dir):
    """Frozen-BN fine-tuning (the DeepLab recipe for small batches) lowers the loss."""
    model = load_tflite(tflite_path(weights_dir, "deeplabv3_257_mv_gpu"))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 33, 33)
    target = torch.randint(0, 21, (2, 33, 33))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), target).item()

    before = eval_loss()
    # Folded weights are not normalised, so gradients are large: a fine-tuning lr (1e-4).
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    for _ in range(3):
        model.train()
        for m in model.modules():  # frozen BN: batches below 12 (DeepLab recipe)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.8 * before
    bn = dict(model.named_modules())["backbone.features.0.1"]
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0


def test_create_model_with_fewer_classes_keeps_all_but_classifier(monkeypatch, weights_dir, caplog):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    full = create_model("deeplabv3_mobilenetv2", pretrained="deeplabv3_257_mv_gpu")
    with caplog.at_level(logging.WARNING, logger="deeplab.weights"):
        small = create_model(
            "deeplabv3_mobilenetv2", pretrained="deeplabv3_257_mv_gpu", num_classes=11
        )
    assert small.num_classes == 11 and small.head.classifier.out_channels == 11
    assert "head.classifier.weight" in caplog.text and "head.classifier.bias" in caplog.text
    full_sd, small_sd = full.state_dict(), small.state_dict()
    for key, value in small_sd.items():
        if key.startswith("head.classifier."):
            assert value.shape != full_sd[key].shape
        else:
            assert torch.equal(value, full_sd[key]), key


def test_saved_state_dict_loads_back_identically(monkeypatch, weights_dir, tmp_path):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    model = create_model("deeplabv3_mobilenetv2", pretrained="deeplabv3_mnv2_dm05_pascal_quant")
    model.eval()
    torch.save(model.state_dict(), tmp_path / "voc.pt")
    again = create_model(
        "deeplabv3_mobilenetv2", pretrained=str(tmp_path / "voc.pt"), width_mult=0.5
    ).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_tflite_path_and_output_stride_override(weights_dir):
    path = tflite_path(weights_dir, "deeplabv3_mnv2_dm05_pascal_quant")
    model = create_model("deeplabv3_mobilenetv2", pretrained=str(path), output_stride=8)
    assert model.output_stride == 8
    with pytest.raises(ValueError, match="deeplabv3_mobilenetv2"):
        create_model("deeplabv3plus_mobilenetv2", pretrained=str(path))


def test_corrupt_tflite_file_is_named(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.tflite"):
        read_deeplab(bad)
