"""Frozen run configurations of the two training stages and their YAML form.

The dataclass defaults are the embedded default profile (MiniCLIP-64 on the shipped EuroSAT-MS
sample, see ``configs/default``); ``configs/paper`` holds the paper profile. A YAML file only needs
the keys that differ from the defaults; unknown keys are errors. Relative paths are taken from the
project root; ``out_dir: null`` means the run store (``runs/<profile>/<stage>/<key>/``), ``cache_dir: null`` the cache
folder of :mod:`mtmg.core.paths`, ``teacher_dir: null`` the stage 1 folder of the same profile.
Every value is type- and range-checked when a config is built, before a stage writes anything;
numbers YAML reads as text (``1e-4``) are converted, other text where a number belongs is an error, and
so are booleans, lists, mappings, null, infinity and NaN. A config file must be UTF-8 and may expand (YAML
aliases included) to at most :data:`MAX_CONFIG_NODES` values.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mtmg.core.checkpoint import atomic_write_text
from mtmg.core.errors import ConfigError, ConfigKeyError, ConfigTypeError

C = TypeVar("C")

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
AUGMENTATIONS = ("none", "d4", "d4_student", "paint", "rrc")
"""The ``augment`` values of the stage configs (:mod:`mtmg.data.augment` implements them)."""
FEATURE_LOSSES = ("mse", "cosine")
"""The ``feature_loss`` values of stage 2 (:func:`mtmg.method.losses.feature_loss`)."""
MAX_CONFIG_NODES = 100_000
"""The most values (aliases counted each time they are used) a config file may expand to."""
MAX_CONFIG_DEPTH = 50
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A profile or stage name: one folder name under the run store, never a path."""


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is a :data:`PLAIN_NAME` (no ``/``, ``..``, leading dot or empty name)."""
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _check_augment(name: str) -> None:
    _check(name in AUGMENTATIONS, "augment", name, f"one of {list(AUGMENTATIONS)} (mtmg.core.config.AUGMENTATIONS)")


@dataclass(frozen=True)
class DataSpec:
    """One dataset of the registry ``mtmg.data.datasets.get_dataset`` (or ``synthetic``) and its splits.

    ``val_split: null`` carves a validation set from the train split (PAINT: 10 %, at most 5,000).
    """

    name: str
    root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    prompt_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model; ``pretrained: miniclip`` trains (or reuses) MiniCLIP-64 via ``mtmg.method.miniclip``."""

    name: str = "MiniCLIP-64"
    pretrained: str | None = "miniclip"


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule (linear warm-up then cosine), loop and checkpoint settings of one stage.

    ``shuffle``: a new order of the training items in every epoch (false: the dataset's order in every
    epoch, as the authors' stage 2); ``drop_last``: leave out the last, incomplete batch of an epoch (the
    authors' training loaders do)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    drop_last: bool = False
    shuffle: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    num_workers: int = 0
    compile: bool = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "at least 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check(self.lr > 0, "lr", self.lr, "a positive learning rate")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "0 or more")
        _check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two numbers in [0, 1)")
        _check(self.eps > 0, "eps", self.eps, "positive")
        _check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "0 or more")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "positive or null")
        _check(self.seed >= 0, "seed", self.seed, "0 or more")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "0 (only at the end) or more")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, "0 or more")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "at least 1 or null")


@dataclass(frozen=True)
class StageConfig:
    """What every stage config has: its profile, how a missing validation split is carved from train
    (PAINT: ``carve_fraction`` of it, at most ``carve_max`` items, drawn with ``carve_seed``), evaluation
    settings and folders (``out_dir`` is a plain output folder for the command line; the pipeline keeps
    its outputs in the run store, see :mod:`mtmg.core.runstore`). ``threads``: the torch CPU threads the
    stage runs on; results depend on it, so it is part of the run's key and never taken from the load."""

    profile: str = "default"
    carve_fraction: float = 0.1
    carve_max: int = 5000
    carve_seed: int = 0
    in_memory: bool = True
    eval_batch_size: int = 64  # the default profile's tiny models run fastest in small batches on a CPU
    threads: int = 1
    cache_dir: str | None = None
    out_dir: str | None = None

    def __post_init__(self) -> None:
        _check(self.threads >= 1, "threads", self.threads, "a positive number of torch CPU threads")
        _check(0 < self.carve_fraction < 1, "carve_fraction", self.carve_fraction, "in (0, 1)")
        _check(self.carve_max >= 1, "carve_max", self.carve_max, "at least 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "at least 1")
        _check(is_plain_name(self.profile), "profile", self.profile,
               "a plain profile name (letters, digits, '_', '-', '.'; not a path)")

    @property
    def carve(self) -> tuple[float, int, int]:
        """(fraction, max_size, seed) of :func:`mtmg.data.datasets.carve_validation`."""
        return self.carve_fraction, self.carve_max, self.carve_seed


@dataclass(frozen=True)
class PatchConfig(StageConfig):
    """Stage 1: PAINT patching of the CLIP image tower, interpolation and α selection."""

    clip: ClipSpec = ClipSpec()
    task: DataSpec = DataSpec(name="eurosat_ms", root="data/eurosat_ms_sample")
    supported: tuple[DataSpec, ...] = (DataSpec(name="synthetic"),)
    train: TrainConfig = TrainConfig(warmup_steps=10)
    augment: str = "d4"
    alphas: tuple[float, ...] = ALPHAS

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_augment(self.augment)
        _check(bool(self.alphas) and all(0 <= a <= 1 for a in self.alphas), "alphas", self.alphas,
               "a non-empty list of mixing weights in [0, 1]")


@dataclass(frozen=True)
class StudentConfig:
    """A timm ViT with 13 input bands plus a linear projection to the teacher's embedding width.

    ``overrides`` are keyword arguments of ``timm.create_model`` (they replace the architecture's own).
    ``weights``: ``ssl4eo_s2_moco`` (torchgeo ViTSmall16_Weights.SENTINEL2_ALL_MOCO), a file, or null.
    """

    arch: str = "vit_small_patch16_224"
    overrides: dict[str, Any] = field(default_factory=lambda: {
        "img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4})
    in_chans: int = 13
    drop_path: float = 0.1
    weights: str | None = None
    out_dim: int | None = None

    def __post_init__(self) -> None:
        _check(self.in_chans >= 1, "in_chans", self.in_chans, "at least 1")
        _check(0 <= self.drop_path < 1, "drop_path", self.drop_path, "in [0, 1)")
        _check(self.out_dim is None or self.out_dim >= 1, "out_dim", self.out_dim, "at least 1 or null")


@dataclass(frozen=True)
class AlignConfig(StageConfig):
    """Stage 2: distillation of the patched CLIP image tower (RGB) into a multispectral student.

    ``augment``: ``d4`` applies one random D4 element to both views (the teacher cache then holds the
    embeddings of all 8 variants of each tile), ``d4_student`` to the MS view only (the teacher sees
    the tile as it is), ``none``; ``rrc`` (the authors' setting) crops each native-resolution view on its own
    at every step (:func:`mtmg.data.augment.authors_crops`; read from disk, so ``in_memory`` does not apply,
    and ``teacher_cache`` must be false). ``ms_size`` resizes the MS view (bicubic, clamped after resizing) to
    the student's input size.
    ``teacher_dir`` (command line only) is the stage 1 folder to distil; the pipeline passes its own.
    """

    teacher_dir: str | None = None
    student: StudentConfig = StudentConfig()
    data: DataSpec = DataSpec(name="eurosat_ms", root="data/eurosat_ms_sample")
    eval_sets: tuple[DataSpec, ...] = (DataSpec(name="eurosat_ms", root="data/eurosat_ms_sample"),)
    train: TrainConfig = TrainConfig(epochs=60, lr=1e-3, weight_decay=0.01, warmup_steps=20)
    feature_loss: str = "mse"
    cls_weight: float = 0.05
    teacher_cache: bool = True
    augment: str = "d4"
    retrieval_ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    ms_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_augment(self.augment)
        _check(self.feature_loss in FEATURE_LOSSES, "feature_loss", self.feature_loss, f"one of {list(FEATURE_LOSSES)}")
        _check(self.cls_weight >= 0, "cls_weight", self.cls_weight, "0 or more")
        _check(bool(self.retrieval_ks) and all(k >= 1 for k in self.retrieval_ks), "retrieval_ks",
               self.retrieval_ks, "a non-empty list of positive integers")
        _check(self.ms_size is None or self.ms_size >= 1, "ms_size", self.ms_size, "at least 1 or null")


@dataclass(frozen=True)
class ZeroShotConfig:
    """Chapter 1's stage: one CLIP model scored zero-shot on remote-sensing ``tasks`` and
    ``extra_tasks`` (RGB view) and on the ``supported`` tasks it already does well; each on its test
    split (else validation). A profile derives it from its two training stages; a ``zeroshot.yaml``
    in the profile folder changes single keys of the derived config (e.g. ``extra_tasks``)."""

    profile: str = "default"
    clip: ClipSpec = ClipSpec()
    tasks: tuple[DataSpec, ...] = ()
    extra_tasks: tuple[DataSpec, ...] = ()
    supported: tuple[DataSpec, ...] = ()
    batch_size: int = 256
    num_workers: int = 0
    threads: int = 1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _check(is_plain_name(self.profile), "profile", self.profile,
               "a plain profile name (letters, digits, '_', '-', '.'; not a path)")
        _check(self.threads >= 1, "threads", self.threads, "a positive number of torch CPU threads")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, "0 or more")


ALL_SHOTS = 0
"""``shots`` value of the probe meaning the whole training split."""
PROBE_CS: tuple[float, ...] = tuple(10.0 ** e for e in range(-3, 4))
"""Inverse regularisation strengths the probe tries on validation (1e-3 to 1e3)."""


@dataclass(frozen=True)
class ProbeConfig:
    """The linear-probe stage of a profile (``configs/<profile>/probe.yaml``; without ``datasets``: the
    alignment evaluation sets): training tiles per class (``shots``, :data:`ALL_SHOTS` = the whole
    split), draws (``seeds``), the regularisation values ``Cs`` tried on validation, a cap ``max_items``
    on each split (a fixed random subset drawn with ``seed``) and the bootstrap resamples of the
    differences."""

    datasets: tuple[DataSpec, ...] = ()
    shots: tuple[int, ...] = (1, 2, 5, ALL_SHOTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    Cs: tuple[float, ...] = PROBE_CS
    max_items: int | None = None
    seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        _check(bool(self.shots) and all(k >= 0 for k in self.shots), "shots", self.shots,
               f"a non-empty list of tiles per class (>= 1, or {ALL_SHOTS} for the whole training split)")
        _check(bool(self.seeds) and all(s >= 0 for s in self.seeds), "seeds", self.seeds,
               "a non-empty list of seeds >= 0")
        _check(bool(self.Cs) and all(c > 0 for c in self.Cs), "Cs", self.Cs, "a non-empty list of positive numbers")
        _check(self.max_items is None or self.max_items >= 2, "max_items", self.max_items, "at least 2 or null")
        _check(self.seed >= 0, "seed", self.seed, "0 or more")
        _check(self.bootstrap >= 1, "bootstrap", self.bootstrap, "at least 1 resample")


@dataclass(frozen=True)
class EmbeddingsConfig:
    """The embeddings of chapters 3 and 4: the paired dataset's ``split``, at most ``max_items`` items (a
    fixed random subset drawn with ``seed``, which also fixes the example picks and the layouts)."""

    split: str = "test"
    max_items: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.split, str) and bool(self.split), "split", self.split, "a split name")
        _check(self.max_items >= 1, "max_items", self.max_items, "at least 1")
        _check(self.seed >= 0, "seed", self.seed, "0 or more")


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert plain YAML data ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigTypeError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names, key=str)
        if unknown:
            raise ConfigKeyError(f"{where}: unknown key(s) {unknown} for {tp.__name__}; valid keys: {sorted(names)}")
        missing = [f.name for f in dataclasses.fields(tp) if f.name not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigKeyError(f"{where}: missing key(s) {missing} of {tp.__name__}; add them "
                                 f"(e.g. {missing[0]}: ...)")
        built = {k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**built)
        except ConfigError as e:  # a range check of the dataclass: name the file and the nested key
            raise ConfigError(f"{where}.{e}") from None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigTypeError(f"{where}: null is not allowed here")
        return _build(next(a for a in args if a is not type(None)), value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if inner is None and len(args) != len(value):
            raise ConfigTypeError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_build(inner or args[i], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigTypeError(f"{where}: expected a mapping with text keys, got {value!r}")
        return dict(value)
    if tp is float:
        return _number(value, where)
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigTypeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    """A finite float from an int, a float or a number YAML read as text (``1e-4`` without a dot)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigTypeError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _check_size(data: Any, where: str) -> None:
    """Refuse data that expands (each use of a YAML alias counted) beyond :data:`MAX_CONFIG_NODES` values
    or nests deeper than :data:`MAX_CONFIG_DEPTH` levels; the walk stops at the first value over the bound."""
    count = 0
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES or depth > MAX_CONFIG_DEPTH:
            what = (f"more than {MAX_CONFIG_NODES} values" if count > MAX_CONFIG_NODES
                    else f"more than {MAX_CONFIG_DEPTH} nested levels")
            raise ConfigError(f"{where}: the config expands to {what} (repeated YAML aliases?); "
                              "write the values out")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()] + [(k, depth + 1) for k in node]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


def read_yaml(path: str | Path) -> Any:
    """The data of a UTF-8 YAML config file (``yaml.safe_load``, bounded by :func:`_check_size`); errors
    name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found; see configs/default/*.yaml for examples")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """The data of YAML ``text`` (``yaml.safe_load``, bounded by :func:`_check_size`); errors name ``where``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    _check_size(data, where)
    return data


def convert(tp: Any, value: Any, where: str) -> Any:
    """Plain data ``value`` as the annotated type ``tp``, checked as a config value is (errors name ``where``)."""
    return _build(tp, value, where)


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build the frozen config ``cls`` from nested plain data (missing keys keep their defaults)."""
    return _build(cls, data, where)


def load_config(path: str | Path, cls: type[C]) -> C:
    """Read a YAML file into ``cls``; errors name the file and the offending key."""
    return from_dict(cls, read_yaml(path) or {}, where=str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested data (tuples as lists) suitable for YAML or JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the resolved configuration of a run), atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def validated(cfg: C, where: str = "config") -> C:
    """``cfg`` rebuilt from its plain data, so that every value is type- and range-checked (a frozen
    config made with ``dataclasses.replace`` is range-checked but not type-checked)."""
    return from_dict(type(cfg), to_dict(cfg), where=where)
