"""Training configuration: typed dataclasses, filled from code defaults -> YAML -> CLI overrides.

Config flows one way. ``load_config("voc_v3plus_xception65", ["optim.lr=0.01"])`` starts
from the defaults below, applies the YAML recipe (a name of one shipped in
``deeplab/recipes/``, ``list_recipes()``, or a path to a file), then the dotted ``key=value``
overrides (values parsed as YAML, so ``data.crop_size=[321,321]`` is a list). Every key is
checked against the dataclass fields: an unknown key is an error that lists the valid ones,
and ``validate`` turns inconsistent settings into errors (or warnings) a person can act on.
The resolved config is saved inside every checkpoint (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import shutil
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deeplab.data.labels import IMAGENET_MEAN, IMAGENET_STD
from deeplab.models import list_models
from deeplab.models.layers import OUTPUT_STRIDES, aligned_size
from deeplab.weights.zoo import get_entry


class ConfigError(ValueError):
    """A setting that cannot work; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    """Which network to build and where its starting weights come from."""

    name: str = "deeplabv3plus_mobilenetv2"  # a registered name (`deeplab models` lists them)
    num_classes: int | None = None  # None: the dataset's class count
    output_stride: int = 16  # train at 16, evaluate at `eval.output_stride` (DeepLab-v3, sec. 4)
    align_corners: bool | None = None  # None: the builder's default
    options: dict[str, Any] = field(default_factory=dict)  # extra builder options (width_mult, ...)
    # A zoo entry or a weight file for the whole DeepLab; a different class count keeps all
    # weights but the classifier.
    pretrained: str | None = None
    # ImageNet weights for the backbone only: a zoo entry (e.g. mobilenet_v2_imagenet) or a
    # state_dict file in torchvision's key layout.
    backbone_weights: str | None = None
    # A DeepLab of another architecture to start from (a zoo entry or checkpoint): e.g.
    # Google's v3 VOC model under a v3+ decoder. Matching tensors are copied, a widened ASPP
    # projection is zero-padded, the rest starts fresh (deeplab.hub.transfer).
    init_from: str | None = None
    # Batch norm: "finetune" (train mode, learn gamma/beta), "freeze" (eval mode, no grad),
    # "freeze_backbone" (freeze the backbone's and the image-pooling branch's, fine-tune
    # the rest of the head), or "auto": fine-tune only when a BN layer
    # sees >= 12 images per step, else freeze (the TF release's recipe).
    bn: str = "auto"
    sync_bn: bool = True  # SyncBatchNorm under DDP when BN is fine-tuned
    # Modules whose weights stay as loaded (no gradient, BN in eval mode), by name as in
    # model.named_modules(), e.g. [backbone.features.0, backbone.features.1]. Freezing the
    # first, full-resolution layers of an ImageNet backbone keeps generic features and
    # spares their backward pass (the costliest part on a CPU); Detectron's FREEZE_AT.
    frozen_modules: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """Where the images are and how training crops are made."""

    dataset: str = "camvid"  # a name known to deeplab.data.datasets.build_dataset
    root: str | None = None  # required: no dataset path is assumed
    train_split: str = "train"
    val_split: str | None = "val"  # null: no validation
    options: dict[str, Any] = field(default_factory=dict)  # extra dataset options (folder names)
    crop_size: list[int] = field(default_factory=lambda: [513, 513])  # [height, width]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    scale_step: float = 0.25  # random scale 0.5-2.0 in steps of 0.25 (DeepLab-v3+, sec. 4)
    hflip: bool = True
    mean: list[float] | None = None  # 0-255 units; None: the weights' convention (ImageNet)
    std: list[float] | None = None
    num_workers: int = 2
    # Bootstrapping on hard images (DeepLab-v3, sec. 4.1): training images containing any
    # of these classes (names or ids) appear `bootstrap_copies` times per epoch.
    bootstrap_classes: list[str | int] = field(default_factory=list)
    bootstrap_copies: int = 2
    # Photometric jitter, for footage in other light than the training images: e.g.
    # {brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.03, blur: 0.2} (factors in
    # [1 - x, 1 + x], hue as a share of the colour circle, blur a probability).
    photometric: dict[str, float] = field(default_factory=dict)
    # Crops centred on a pixel of one of these classes (names or ids) with probability
    # focus_prob, so that thin, rare classes (poles, signs) are seen whole and often.
    focus_classes: list[str | int] = field(default_factory=list)
    focus_prob: float = 0.0
    # Before the first step, check every image/mask pair ("full"; above 2000 pairs a split
    # is sampled), a sample of 2000 ("sample"), or nothing ("off"): missing or unreadable
    # files, wrong sizes, RGB or 0/255 masks, values the classes cannot hold.
    check: str = "full"


@dataclass
class OptimConfig:
    """SGD with momentum and the "poly" schedule lr * (1 - iter/max_iter)^power."""

    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 4e-5
    # TF applies weight decay to conv/linear kernels only, not to BN parameters or biases.
    decay_bn_and_bias: bool = False
    poly_power: float = 0.9
    warmup_iters: int = 0  # linear warmup from warmup_factor * lr
    warmup_factor: float = 0.1


@dataclass
class LossConfig:
    """Pixel-wise cross-entropy with the ignore label, class weights and hard-pixel mining."""

    # A list with one weight per class, or a JSON file holding such a list (or {"weights": [...]}).
    class_weights: list[float] | str | None = None
    # Average only the hardest fraction of pixels (TF flag top_k_percent_pixels); 1.0 = all.
    top_k_percent_pixels: float = 1.0
    # Soften the targets: 0.1 puts 10% of each pixel's target on the other classes
    # (Szegedy et al. 2016); against over-confident predictions on unfamiliar footage.
    label_smoothing: float = 0.0
    # Ramp from all pixels to top_k over this many steps (TF hard_example_mining_step); 0 = none.
    hard_example_mining_step: int = 0


@dataclass
class TrainConfig:
    """Length of training, batch, precision, logging and checkpoints."""

    out_dir: str = "runs/train"
    iters: int = 30000
    batch_size: int = 16  # images per optimizer step, summed over processes and accumulation
    accum_steps: int = 1  # gradient accumulation: micro-batch = batch / (accum * world size)
    # none | bf16 | fp16 (fp16 on CUDA only, with a GradScaler) | auto: bf16 where the
    # hardware has it natively, else none (deeplab.train.runtime.resolve_amp)
    amp: str = "none"
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default
    log_every: int = 20
    val_every: int = 1000  # 0: validate only at the end
    ckpt_every: int = 500
    # iters: the poly decay spans train.iters steps, and max_minutes (if set) stops a run
    # early with a checkpoint (a job's time limit). time: the decay spans max_minutes of
    # training, validations included, however many steps that is on this machine (iters
    # is then an upper bound); the last steps are always at the end of the decay.
    schedule: str = "iters"
    max_minutes: float | None = None
    # End this run at this step with a checkpoint, keeping the schedule of `iters` (split a
    # long schedule over several jobs; continue with --resume).
    stop_at: int | None = None
    progress: bool = True  # tqdm bar on rank 0
    # NHWC tensors: 1.3x faster MobileNetV2 training steps on a 2-core CPU
    # (benchmarks/bench_train_throughput.py); mixed results for other backbones and devices.
    channels_last: bool = False
    tensorboard: bool = False  # event files in out_dir/tb (the extra `tensorboard`)
    # After training, choose the dense CRF's parameters for the model on training images
    # and store them in best.pt (`deeplab tune-crf`); `--crf` then uses them.
    tune_crf: bool = False


@dataclass
class EvalConfig:
    """Periodic validation during training."""

    output_stride: int | None = None  # None: the training output stride
    batch_size: int = 1
    # Before each validation, re-estimate the statistics of the BN layers being fine-tuned
    # over this many training batches ("precise BN"); 0: use the running averages. With a
    # high learning rate the running averages lag behind the weights, and evaluation with
    # them can be far worse than the model is.
    precise_bn_batches: int = 0


@dataclass
class Config:
    """The whole training recipe. Sections mirror the YAML recipes (deeplab/recipes/)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --- loading ------------------------------------------------------------------------------


def load_config(
    recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults, then the YAML ``recipe`` (a file, or the name of a shipped recipe), then
    ``key=value`` overrides; validated."""
    cfg = Config()
    if recipe is not None:
        path = recipe_path(recipe)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...)")
        cfg = merge(cfg, data, source=str(path))
    return apply_overrides(cfg, overrides)


# --- the recipes shipped with the package -------------------------------------------------


def _recipes_dir() -> Path:
    return Path(str(resources.files("deeplab") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Name -> one-line description (the recipe's first comment line), sorted by name."""
    found = {}
    for path in sorted(_recipes_dir().glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        found[path.stem] = first.lstrip("# ").strip()
    return found


def recipe_path(recipe: str | Path) -> Path:
    """A YAML file: ``recipe`` itself when it is a file, else the shipped recipe of that
    name (``camvid_v3plus_mobilenetv2``, with or without ``.yaml``)."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = _recipes_dir() / f"{name}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"recipe {str(recipe)!r} is neither a file nor a shipped recipe; "
                      f"shipped: {', '.join(list_recipes())} (`deeplab recipes` describes "
                      "them)")  # fmt: skip


def write_recipe(name: str, out: str | Path) -> Path:
    """Copy the shipped recipe ``name`` to ``out`` (a file, or a folder for ``name.yaml``)
    to edit; refuses to overwrite a file."""
    source = recipe_path(name)
    target = Path(out).expanduser()
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise ConfigError(f"{target} exists; give another --out or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with dotted ``key=value`` overrides (values parsed as YAML); validated."""
    for key, value in parse_assignments(overrides, what="override", example="optim.lr=0.01"):
        cfg = merge(cfg, _nest(key.split("."), value), source=f"override {key}={value!r}")
    validate(cfg)
    return cfg


def parse_assignments(
    items: list[str] | tuple[str, ...], *, what: str, example: str
) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1,2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]``, values read as YAML.

    The one parser of ``key=value`` words: config overrides, ``--model-option`` and
    ``--crf-option``. ``what``/``example`` word the error (``--crf-option``, ``iterations=10``).
    """
    pairs = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not key=value (e.g. {example})")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"{what} {item!r}: {text!r} is not a YAML value") from None
        pairs.append((key.strip(), value))
    return pairs


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. the copy inside a checkpoint)."""
    return merge(Config(), data, source="checkpoint config")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config: what checkpoints and logs store."""
    return dataclasses.asdict(cfg)


def merge(obj: Any, data: dict[str, Any], *, source: str, prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with ``data`` applied; checks every key and type."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            valid = ", ".join(f"{prefix}{n}" for n in names)
            raise ConfigError(f"{source}: unknown key {dotted!r}; valid keys: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} is a section; give it a mapping")
            changes[key] = merge(current, value, source=source, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(value, hints[key], dotted, source)
    return dataclasses.replace(obj, **changes)


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    return {keys[0]: value} if len(keys) == 1 else {keys[0]: _nest(keys[1:], value)}


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int -> float allowed, tuple -> list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{source}: {key}={value!r} should be {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is Any:
        return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            return "on" if value else "off"
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item_tp, key, source) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and item_tp is int:
            return [int(value), int(value)]  # a single size means a square crop
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{source}: {key}={value!r} should be {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


# --- validation ---------------------------------------------------------------------------

BN_MODES = ("auto", "finetune", "freeze", "freeze_backbone")
AMP_MODES = ("none", "bf16", "fp16", "auto")
DEVICES = ("auto", "cpu", "cuda")


def validate(cfg: Config, *, world_size: int = 1) -> None:
    """Raise ``ConfigError`` for settings that cannot work; warn about doubtful ones."""
    m, d, o, lo, t = cfg.model, cfg.data, cfg.optim, cfg.loss, cfg.train
    _choice("model.bn", m.bn, BN_MODES)
    _choice("data.check", d.check, ("full", "sample", "off"))
    if m.name not in list_models():
        raise ConfigError(f"model.name={m.name!r} is not a registered model; choose one of: "
                          f"{', '.join(list_models())} (`deeplab models` lists them)")
    _choice("train.amp", t.amp, AMP_MODES)
    _choice("train.schedule", t.schedule, ("iters", "time"))
    if t.schedule == "time" and not (t.max_minutes and t.max_minutes > 0):
        raise ConfigError("train.schedule=time needs a budget: train.max_minutes=60 (minutes "
                          "of training the schedule decays over)")  # fmt: skip
    _choice("train.device", t.device, DEVICES)
    for key, os_ in (
        ("model.output_stride", m.output_stride),
        ("eval.output_stride", cfg.eval.output_stride),
    ):
        if os_ is not None and os_ not in OUTPUT_STRIDES:
            *most, last = OUTPUT_STRIDES
            raise ConfigError(
                f"{key}={os_}: output stride must be {', '.join(map(str, most))} or {last}"
            )
    if cfg.eval.precise_bn_batches < 0:
        raise ConfigError("eval.precise_bn_batches must be >= 0 (0 turns it off)")
    if sum(bool(v) for v in (m.pretrained, m.backbone_weights, m.init_from)) > 1:
        raise ConfigError(
            "set one of model.pretrained (a whole DeepLab), model.init_from (another DeepLab to "
            "start from) and model.backbone_weights (ImageNet backbone)"
        )
    if m.num_classes is not None and m.num_classes < 1:
        raise ConfigError(f"model.num_classes={m.num_classes} must be >= 1")
    unknown = set(d.photometric) - {"brightness", "contrast", "saturation", "hue", "blur"}
    if unknown:
        raise ConfigError(f"data.photometric: unknown {sorted(unknown)}; the keys are brightness, "
                          "contrast, saturation, hue, blur")  # fmt: skip
    if not 0.0 <= d.focus_prob <= 1.0 or (d.focus_prob and not d.focus_classes):
        raise ConfigError(f"data.focus_prob={d.focus_prob} must be in [0, 1], with "
                          "data.focus_classes naming the classes")  # fmt: skip
    if not 0.0 <= lo.label_smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing={lo.label_smoothing} must be in [0, 1)")
    if d.bootstrap_copies < 1:
        raise ConfigError(f"data.bootstrap_copies={d.bootstrap_copies} must be >= 1 (1: no copies)")
    if len(d.crop_size) != 2 or min(d.crop_size) < 1:
        raise ConfigError(f"data.crop_size={d.crop_size} must be [height, width], e.g. [513, 513]")
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        raise ConfigError(
            f"data.scale_range={d.scale_range} must be [low, high] with 0 < low <= high"
        )
    for key, v in (("data.mean", d.mean), ("data.std", d.std)):
        if v is not None and len(v) != 3:
            raise ConfigError(f"{key}={v} needs 3 values (R, G, B) in 0-255 units")
    if o.lr <= 0 or not 0 <= o.momentum < 1 or o.weight_decay < 0:
        raise ConfigError(
            f"optim: lr={o.lr} must be > 0, momentum={o.momentum} in [0, 1), "
            f"weight_decay={o.weight_decay} >= 0"
        )
    if not 0 < lo.top_k_percent_pixels <= 1:
        raise ConfigError(
            f"loss.top_k_percent_pixels={lo.top_k_percent_pixels} must be in (0, 1]; 1.0 uses "
            "every pixel, 0.25 the hardest quarter"
        )
    if t.iters < 1:
        raise ConfigError(f"train.iters={t.iters} must be >= 1")
    if t.log_every < 1 or t.ckpt_every < 1 or t.val_every < 0:
        raise ConfigError("train.log_every and train.ckpt_every must be >= 1, val_every >= 0")
    if t.accum_steps < 1 or t.batch_size < 1:
        raise ConfigError("train.batch_size and train.accum_steps must be >= 1")
    per = t.accum_steps * world_size
    if t.batch_size % per:
        fixed = max(per, t.batch_size // per * per)
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by accum_steps ({t.accum_steps}) "
            f"x processes ({world_size}); try train.batch_size={fixed}"
        )
    for os_ in {m.output_stride, cfg.eval.output_stride or m.output_stride}:
        for side in sorted(set(d.crop_size)):
            if (side - 1) % os_:
                suggestion = aligned_size(side, os_)
                warnings.warn(
                    f"data.crop_size: crop {side} is not k*{os_}+1; try {suggestion} so that "
                    "feature corners align with image corners (the TF release's convention)",
                    stacklevel=2,
                )


def normalisation(cfg: Config) -> tuple[list[float], list[float]]:
    """Input mean/std (0-255 units): the config's, else the pretrained zoo entry's (Google's
    models expect x/127.5 - 1 or x/128 - 1), else ImageNet's (torchvision-layout backbones)."""
    mean, std = cfg.data.mean, cfg.data.std
    source = cfg.model.pretrained or cfg.model.init_from
    if (mean is None or std is None) and source:
        try:
            entry = get_entry(source)
            mean, std = mean or list(entry.mean), std or list(entry.std)
        except KeyError:
            pass  # a weight file, not a zoo entry: ImageNet statistics
    return list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)


def require_data_root(cfg: Config) -> Path:
    """The dataset folder, or an error saying how to give it."""
    if not cfg.data.root:
        raise ConfigError(
            "data.root is required: set it in the YAML file or pass data.root=/path/to/dataset"
        )
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} is not a folder; pass data.root=/path/to/dataset")
    return root


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; choose one of: {', '.join(choices)}")
