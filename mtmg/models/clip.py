"""CLIP loading (pretrained tag, checkpoint file or local directory) and the frozen-head image classifier.

``load_clip`` wraps ``open_clip.create_model_and_transforms`` and resolves the weights itself first, so
that missing weights fail at once with a message saying how to supply a local file. Model configs shipped
in ``mtmg/model_configs/`` are registered with open_clip when this module is imported; any other JSON
config can be registered with ``register_model_config``, or named by its path wherever a model name is
expected (``ViT-B-32-small.json``; see :func:`config_file_model`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
import torch.nn.modules.activation
import torch.nn.modules.transformer
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from safetensors import SafetensorError
from torch import nn

from mtmg.core.checkpoint import atomic_save
from mtmg.core.device import resolve_device
from mtmg.core.errors import ArgumentError, ConfigError, WeightsError
from mtmg.core.paths import resolve

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
LOCAL_DIR_PREFIX = "local-dir:"
LOCAL_DIR_CONFIG = "open_clip_config.json"
RANDOM_INIT = "random-init"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_REGISTERED: set[Path] = set()


class WeightsUnavailableError(WeightsError, RuntimeError):
    """Pretrained weights cannot be found locally or downloaded."""


class WeightsFileError(WeightsError, RuntimeError):
    """A weight file that exists but cannot be loaded: empty, truncated, or not a state dict of the model."""


@dataclass
class ClipBundle:
    """An open_clip model with its transforms, tokenizer and the identity of its weights."""

    model: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    model_name: str
    weights: str


class ZeroShotHead(nn.Module):
    """Frozen linear head: ``logit_scale * normalize(features) @ weight.T`` (no bias, no parameters),
    computed in fp32 outside autocast.

    ``weight`` (C, D) holds one unit-norm text embedding per class, row i = class i; ``logit_scale`` is the
    multiplier itself (``exp`` of the CLIP parameter, 100 for OpenAI CLIP). Both are buffers.
    """

    weight: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, logit_scale: float | torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"ZeroShotHead weight must be (classes, dim), got shape {tuple(weight.shape)}.")
        self.register_buffer("weight", F.normalize(weight.detach().float(), dim=-1))
        self.register_buffer("logit_scale", torch.as_tensor(logit_scale, dtype=torch.float32).detach().clone())

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """fp32 logits whatever the input dtype or autocast state, so every path scores the same numbers."""
        with torch.autocast(features.device.type, enabled=False):
            features = F.normalize(features.float(), dim=-1)
            return self.logit_scale * features @ self.weight.T


class ImageClassifier(nn.Module):
    """An image encoder followed by a frozen zero-shot head: ``head(encoder(x))``.

    The encoder is CLIP's visual tower (``bundle.model.visual``) or a multispectral student.
    """

    def __init__(self, encoder: nn.Module, head: ZeroShotHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def register_model_config(path: str | Path) -> list[str]:
    """Register an open_clip model config (a JSON file, or a directory of them); return the new model names."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"Model config {path} not found: expected an open_clip JSON config or a folder of them.")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    names = []
    for file in files:
        try:
            cfg = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"Model config {file} is not valid JSON: {e}") from e
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ConfigError(f"Model config {file} lacks {missing}: an open_clip config needs embed_dim, "
                             "vision_cfg and text_cfg (see open_clip/model_configs/ViT-B-32.json).")
        names.append(file.stem)
    if path not in _REGISTERED:
        open_clip.add_model_config(path)
        _REGISTERED.add(path)
    return names


def config_file_model(model_name: str) -> tuple[str, str] | None:
    """For a ``model_name`` ending in ``.json`` (the path of an open_clip model config, relative paths from
    the project root): register the file and return its config name (the file's stem) and its identity
    ``<file name>@sha256:<16 hex>`` (two files with the same stem never share it); None for other names."""
    if not model_name.endswith(".json"):
        return None
    path = resolve(model_name)
    if not path.is_file():
        raise ArgumentError(f"Model config {path} not found: a model name ending in .json must be the path of an "
                            "open_clip model-config file (relative paths start at the project root).")
    (name,) = register_model_config(path)
    if open_clip.get_model_config(name) != json.loads(path.read_text()):  # another file of that name came later
        open_clip.add_model_config(path)
    return name, _file_id(path)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _model_config(model_name: str) -> tuple[str, str, dict]:
    """open_clip's config name, the model's identity and its config dict (a ``.json`` path is registered first)."""
    config_name, model_id = config_file_model(model_name) or (model_name.replace("/", "-"), model_name)
    model_cfg = open_clip.get_model_config(config_name)
    if model_cfg is None:
        raise ArgumentError(f"Unknown model {model_name!r}: not an open_clip config name. Register a JSON config "
                            "first (register_model_config / --model-config PATH.json) or use one of "
                            "open_clip.list_models().")
    return config_name, model_id, model_cfg


def load_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
) -> ClipBundle:
    """Load an open_clip model with its transforms and tokenizer, in eval mode.

    ``pretrained`` is an open_clip tag (``"openai"``), a checkpoint file (a state dict, as open_clip or
    ``torch.save(model.state_dict())`` writes it), ``"local-dir:PATH"`` or a directory holding
    ``open_clip_config.json`` and weights (``model_name`` may also be ``"local-dir:PATH"``), or ``None``
    for a random initialisation (with a warning). Tags are looked up in ``cache_dir`` (open_clip's and the
    Hugging Face cache by default) and downloaded if missing; with ``HF_HUB_OFFLINE=1`` nothing is
    downloaded. Weights that cannot be found raise ``WeightsUnavailableError`` before the model is built.
    A tag trained with QuickGELU (e.g. ``openai``) gets QuickGELU; a state dict does not record its
    activation, so name the ``-quickgelu`` config for such weights in a file (``ViT-B-32-quickgelu``).
    """
    device = resolve_device(device)
    cache_dir = None if cache_dir is None else str(cache_dir)
    pretrained = None if pretrained is None else str(pretrained)
    if model_name.startswith(LOCAL_DIR_PREFIX):
        if pretrained is not None:
            raise ValueError(
                f"Model {model_name!r} names a local directory; do not pass pretrained={pretrained!r} too.")
        directory = model_name[len(LOCAL_DIR_PREFIX):]
    elif pretrained is not None and (pretrained.startswith(LOCAL_DIR_PREFIX) or Path(pretrained).is_dir()):
        directory = pretrained.removeprefix(LOCAL_DIR_PREFIX)
    else:
        directory = None
    if directory is not None:
        return _load_from_dir(model_name, Path(directory), device)

    config_name, model_id, model_cfg = _model_config(model_name)
    kwargs: dict = {}
    if pretrained is None:
        warnings.warn(f"No pretrained weights given for {model_name}: the model is randomly initialised.",
                      UserWarning, stacklevel=2)
        checkpoint, weights = None, RANDOM_INIT
    elif Path(pretrained).is_file():
        checkpoint = str(Path(pretrained).resolve())
        if Path(checkpoint).stat().st_size == 0:
            raise WeightsFileError(f"Checkpoint file {checkpoint} for {model_name} is empty (0 bytes): an interrupted "
                                   "download or copy? Copy or download the weights again.")
        weights = _file_id(Path(checkpoint))
    elif _looks_like_path(pretrained):
        raise WeightsUnavailableError(
            f"Checkpoint file {Path(pretrained).resolve()} for {model_name} not found: expected a state dict saved "
            "with torch.save (.pt/.pth/.bin) or a .safetensors file. Check the path, or pass an open_clip tag "
            f"such as {_tags_hint(config_name)}.")
    else:
        tag_cfg = open_clip.get_pretrained_cfg(config_name, pretrained)
        if not tag_cfg:
            raise WeightsUnavailableError(
                f"Pretrained weights {pretrained!r} for {model_name}: not a known open_clip tag and no such file. "
                f"Known tags for {model_name}: {_tags_hint(config_name)}. To use your own weights, pass the path of "
                "a local checkpoint file (e.g. --pretrained /path/to/open_clip_pytorch_model.bin).")
        checkpoint = _resolve_tag(config_name, pretrained, tag_cfg, cache_dir)
        weights = pretrained
        kwargs = dict(
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False),
            image_mean=tag_cfg.get("mean"),
            image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"),
            image_resize_mode=tag_cfg.get("resize_mode"),
        )
    try:
        with contextlib.nullcontext() if checkpoint is None else weights_loaded_later():
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                config_name, pretrained=checkpoint, device=device, cache_dir=cache_dir, **kwargs)
    except (RuntimeError, KeyError, ValueError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            SafetensorError, AttributeError) as e:  # AttributeError: a .npz file is read as big_vision weights
        if checkpoint is None:
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:400].rstrip(".:") if lines else type(e).__name__
        raise WeightsFileError(f"Could not load weights {checkpoint} into {model_name}: {detail}. The file must be a "
                               "complete state dict of this architecture saved with torch.save or safetensors "
                               "(TorchScript archives are not supported); if it is truncated, copy or download it "
                               "again.") from e
    model.eval()
    return ClipBundle(model, preprocess_train, preprocess_val, open_clip.get_tokenizer(config_name),
                      model_id, weights)


_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def weights_loaded_later():
    """``torch.nn.init``'s initialisers leave tensors as they are while a model is built whose every weight a
    strict state-dict load overwrites next (open_clip loads full CLIP checkpoints strictly). The random draw
    would be thrown away, and costs seconds for a large model on the CPU (ViT-L-14: about 4 s). The
    initialisers are module-wide, so do not build models in other threads meanwhile."""
    # torch's attention modules import their initialisers by name
    holders = (nn.init, torch.nn.modules.activation, torch.nn.modules.transformer)
    saved = [(holder, name, getattr(holder, name)) for holder in holders for name in _INITIALISERS
             if hasattr(holder, name)]
    for holder, name, _ in saved:
        setattr(holder, name, _unchanged)
    try:
        yield
    finally:
        for holder, name, function in saved:
            setattr(holder, name, function)


def _unchanged(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


RANDOM_INIT_DIR = "random_init"
"""Sub-folder of the cache folder that holds the random initialisations of :func:`random_init_file`."""


def random_init_file(model_name: str, cache_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A random initialisation of ``model_name`` as a state-dict file: drawn once with ``seed`` (the global
    generator is left as it was) and kept in ``cache_dir/random_init/``, named by a hash of the model config,
    the seed and the torch and open_clip versions. Every stage that asks for the model without weights
    loads this file, so they all see the same model and its zero-shot heads are cached like any others."""
    config_name, model_id, model_cfg = _model_config(model_name)
    key = hashlib.sha256(json.dumps({"config": model_cfg, "seed": seed, "torch": torch.__version__,
                                     "open_clip": open_clip.__version__}, sort_keys=True).encode()).hexdigest()
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_id)
    path = Path(cache_dir) / RANDOM_INIT_DIR / f"{slug}-seed{seed}-{key[:16]}.pt"
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(config_name, pretrained=None)
        atomic_save(model.state_dict(), path)
    return path


def _load_from_dir(model_name: str, directory: Path, device: torch.device) -> ClipBundle:
    directory = directory.resolve()
    config_file = directory / LOCAL_DIR_CONFIG
    if not directory.is_dir():
        raise WeightsUnavailableError(f"Local model directory {directory} not found: expected a folder holding "
                                      f"{LOCAL_DIR_CONFIG} and {HF_WEIGHTS_NAME}.")
    if not config_file.is_file():
        raise WeightsUnavailableError(
            f"Local model directory {directory} lacks {LOCAL_DIR_CONFIG}: expected the layout of an open_clip "
            "Hugging Face repository ({'model_cfg': ..., 'preprocess_cfg': ...} plus open_clip_pytorch_model.bin).")
    checkpoint = open_clip.factory._find_checkpoint_in_dir(directory)
    if checkpoint is None:
        raise WeightsUnavailableError(
            f"Local model directory {directory} has no weights: expected {HF_WEIGHTS_NAME} or "
            f"{HF_SAFE_WEIGHTS_NAME} (any *.bin, *.pth or *.safetensors) beside {LOCAL_DIR_CONFIG}.")
    source = LOCAL_DIR_PREFIX + str(directory)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(source, device=device)
    model.eval()
    name = source if model_name.startswith(LOCAL_DIR_PREFIX) else model_name
    weights = f"{directory.name}/{_file_id(Path(checkpoint))}"
    return ClipBundle(model, preprocess_train, preprocess_val, open_clip.get_tokenizer(source), name, weights)


def _resolve_tag(model_name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    """Local path of the weights of an open_clip tag; downloads unless HF_HUB_OFFLINE is set."""
    if hub_offline():
        path = _cached_tag_file(tag_cfg, cache_dir)
        if path is None:
            raise WeightsUnavailableError(_missing_message(model_name, tag, tag_cfg,
                                                           "HF_HUB_OFFLINE is set and they are not in the local cache"))
        return path
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # network, hub and checksum errors all mean: not available
        raise WeightsUnavailableError(_missing_message(
            model_name, tag, tag_cfg,
            f"the download failed ({e}; set HF_HUB_OFFLINE=1 to skip download attempts)")) from e
    if not path:
        raise WeightsUnavailableError(_missing_message(model_name, tag, tag_cfg, "open_clip gives no source for them"))
    return path


def _hub_files(tag_cfg: dict) -> tuple[str, list[str]] | None:
    """(repository, candidate file names) of a tag on the Hugging Face hub, safetensors first."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    alternatives = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else (
        [filename.rsplit(".", 1)[0] + ".safetensors"] if filename.endswith((".bin", ".pth")) else [])
    return repo, alternatives + [filename]


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    hub = _hub_files(tag_cfg)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache  # imported here: only hub tags need it

        repo, names = hub
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _missing_message(model_name: str, tag: str, tag_cfg: dict, reason: str) -> str:
    hub = _hub_files(tag_cfg)
    if hub is not None:
        repo, names = hub
        filename = names[-1]
        where = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    else:
        filename = os.path.basename(tag_cfg.get("url", "")) or "the checkpoint"
        where = tag_cfg.get("url", "the model's publisher")
    return (f"Pretrained weights {model_name}/{tag} are unavailable: {reason}. Supply them as a local file: "
            f"download {filename} from {where} on a machine with internet access, copy it here and pass its path "
            f"instead of the tag (--pretrained /path/to/{filename}, "
            f"or load_clip({model_name!r}, '/path/to/{filename}')).")


def _tags_hint(model_name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    return ", ".join(tags) if tags else "(none registered for this model)"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.startswith(".") or value.endswith(_CHECKPOINT_SUFFIXES)


_FILE_IDS: dict[tuple, str] = {}


def _file_id(path: Path) -> str:
    """``name@sha256:<16 hex>``: identifies a checkpoint by content. Kept for the life of the process per file
    version (device, inode, size, modification and change times in ns): the stages of one notebook kernel load
    the same weights several times, and hashing ViT-L-14's 1.7 GB takes seconds."""
    stat = path.stat()
    version = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if version not in _FILE_IDS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_IDS[version] = f"{path.name}@sha256:{digest.hexdigest()[:16]}"
    return _FILE_IDS[version]



def tower_copy(tower: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A frozen, eval-mode copy of an image tower with the weights ``state`` (e.g. the α = 0 endpoint)."""
    other = copy.deepcopy(tower)
    other.load_state_dict(state)
    return other.requires_grad_(False).eval()

if MODEL_CONFIG_DIR.is_dir():
    register_model_config(MODEL_CONFIG_DIR)
