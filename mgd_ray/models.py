"""The frozen generator: a diffusers ``DiTTransformer2DModel`` + ``AutoencoderKL``.

Where models come from (``model.generator`` in a job):
- ``prior:<name>``   a small prior that ships inside this package (``mgd_ray/priors/<name>/``),
                     trained by ``mgd-ray prior train`` (see its ``prior.json``);
- a local directory  in the diffusers DiT pipeline layout (``transformer/``, ``vae/``), e.g. a
                     ``save_pretrained`` copy of facebook/DiT-XL-2-256;
- a hub id           e.g. ``facebook/DiT-XL-2-256``, loaded from the local HF cache only
                     (``local_files_only=True``) unless ``model.allow_download`` is true.
``model.vae`` optionally names a separate VAE (e.g. ``stabilityai/sd-vae-ft-mse``).

Nothing is read from literals: the VAE scaling factor comes from ``vae.config.scaling_factor``,
the null class id from the transformer's ``num_embeds_ada_norm`` (diffusers' label embedding
table has ``num_classes + 1`` rows and the last one is the CFG null class).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PRIORS_DIR = Path(__file__).parent / "priors"


class ModelError(ValueError):
    """A model could not be found or loaded; the message says where we looked and how to fix."""


# AutoencoderKL's scaling factor when a VAE config has none (the Stable Diffusion value)
DIFFUSERS_DEFAULT_SCALING_FACTOR = 0.18215


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline and the plan know about a generator + VAE: derived from the two model
    configs by :func:`info_from_configs` (of loaded models, of config files, or of the known table)."""

    source: str               # what the job asked for
    path: str                 # where it was loaded (or its configs read) from
    num_classes: int
    null_label: int
    latent_channels: int
    latent_size: int
    image_channels: int
    image_size: int
    scaling_factor: float
    learned_sigma: bool
    facts_from: str           # where these numbers came from
    transformer_sha256: str = "not loaded"
    vae_sha256: str = "not loaded"
    vae_block_out_channels: tuple[int, ...] = ()
    vae_layers_per_block: int = 0
    transformer_config: dict = field(default_factory=dict, compare=False, repr=False)
    vae_config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.latent_size * self.latent_size

    def to_dict(self) -> dict:
        """The manifest's ``model`` record (the configs themselves are left out)."""
        keep = ("source", "path", "num_classes", "null_label", "latent_channels", "latent_size", "image_channels",
                "image_size", "scaling_factor", "learned_sigma", "transformer_sha256", "vae_sha256", "facts_from")
        return {k: getattr(self, k) for k in keep}


def info_from_configs(tc: dict, vc: dict, *, source: str, path: str, facts_from: str,
                      transformer_sha256: str = "not loaded", vae_sha256: str = "not loaded") -> ModelInfo:
    """ModelInfo from a DiT transformer config and an AutoencoderKL config (diffusers' defaults
    where a key is missing). The null class id is ``num_embeds_ada_norm`` (diffusers' label table
    has ``num_classes + 1`` rows, the last the CFG null class); learned sigma = twice the channels out."""
    tc, vc = dict(tc), dict(vc)
    if tc.get("num_embeds_ada_norm") is None:
        raise ModelError(f"{source}: transformer config has no num_embeds_ada_norm (not a class-conditional DiT)")
    in_ch = int(tc.get("in_channels", 4))
    out_ch = tc.get("out_channels")
    out_ch = in_ch if out_ch is None else int(out_ch)
    blocks = tuple(int(b) for b in vc.get("block_out_channels", (64,)))
    latent_size = int(tc["sample_size"])
    sf = vc.get("scaling_factor")
    return ModelInfo(
        source=source, path=str(path), num_classes=int(tc["num_embeds_ada_norm"]),
        null_label=int(tc["num_embeds_ada_norm"]), latent_channels=in_ch, latent_size=latent_size,
        image_channels=int(vc.get("in_channels", 3)), image_size=latent_size * 2 ** (len(blocks) - 1),
        scaling_factor=float(DIFFUSERS_DEFAULT_SCALING_FACTOR if sf is None else sf),
        learned_sigma=out_ch == 2 * in_ch, facts_from=facts_from, transformer_sha256=transformer_sha256,
        vae_sha256=vae_sha256, vae_block_out_channels=blocks,
        vae_layers_per_block=int(vc.get("layers_per_block", 1)), transformer_config=tc, vae_config=vc)


def list_priors() -> list[str]:
    if not PRIORS_DIR.is_dir():
        return []
    return sorted(p.name for p in PRIORS_DIR.iterdir() if (p / "transformer").is_dir())


def resolve_model_path(spec: str, allow_download: bool = False) -> tuple[str, bool]:
    """-> (path or hub id, is_local_dir). Raises ModelError with a fix when nothing matches."""
    if spec.startswith("prior:"):
        name = spec.split(":", 1)[1]
        p = PRIORS_DIR / name
        if not (p / "transformer").is_dir():
            raise ModelError(
                f"unknown prior {name!r} (looked in {p}). Shipped priors: {', '.join(list_priors()) or 'none'}. "
                f"Train one with `mgd-ray prior train jobs/prior-<dataset>.yaml`.")
        return str(p), True
    p = Path(os.path.expanduser(spec))
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {spec!r} is a file; expected a directory with transformer/ and vae/")
        return str(p), True
    if spec.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model directory {spec!r} does not exist")
    return spec, False


def hash_file(path: Path, h=None):
    """``h`` (default a new sha256) updated with the file's bytes, read in 4 MB pieces."""
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h


def _sha256_dir(path: Path) -> str:
    """Hash of a model folder's weight files (the weights' identity)."""
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    for f in files:
        hash_file(f, h)
    return h.hexdigest()[:16] if files else "unknown"


def config_sha256(config: dict) -> str:
    """Hash of a model's settings (its ``config.json`` as loaded, keys starting with ``_`` — the
    diffusers version that saved it, the class name — left out). Settings that change outputs
    live there and not in the weights: the VAE's ``scaling_factor``, the DiT's ``out_channels``."""
    import json
    settings = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_safetensors(folder: str | Path) -> None:
    """Every ``*.safetensors`` file in ``folder`` must have a readable header that covers the whole
    file (``safe_open`` reads only the header: cheap). A truncated or damaged file is a user error
    (ModelError, exit 2) that names the file and the fix, not an unexpected error deep in diffusers."""
    from safetensors import safe_open
    folder = Path(folder)
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="np"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError: any unreadable file
            with open(f, "rb") as fh:
                head = fh.read(64)
            what = ("a Git LFS pointer, not the weights: fetch them with `git lfs pull` in that repository"
                    if head.startswith(b"version https://git-lfs") else
                    "corrupt or incomplete (an interrupted copy or download leaves such a file): copy it again "
                    "from its source (compare its size and sha256), or point model.generator / model.vae at an "
                    "intact copy; a shipped prior: reinstall mgd_ray, or retrain it with `mgd-ray prior train`")
            raise ModelError(f"model weights file {str(f)!r} ({f.stat().st_size:,} bytes) cannot be read: "
                             f"{str(e).splitlines()[0][:200]}. The file is {what}") from None


def diffusers_files(subfolder: str | None) -> dict[str, str]:
    """The files ``ModelMixin.from_pretrained(repo, subfolder=...)`` opens, safetensors only:
    its config, the single weights file, or the shard index and the shards it names."""
    from diffusers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    p = f"{subfolder}/" if subfolder else ""
    stem, ext = SAFETENSORS_WEIGHTS_NAME.rsplit(".", 1)
    return {"config": p + CONFIG_NAME, "weights": p + SAFETENSORS_WEIGHTS_NAME,
            "index": p + SAFE_WEIGHTS_INDEX_NAME,
            "shards": f"{p}{stem}-*-of-*.{ext}"}   # save_pretrained's shard names: <stem>-00001-of-00003.<ext>


def _load(cls, spec: str, subfolder: str | None, allow_download: bool, dtype):
    path, local = resolve_model_path(spec, allow_download)
    kwargs = dict(local_files_only=not allow_download, low_cpu_mem_usage=False)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if local and subfolder and not (Path(path) / subfolder).is_dir():
        if (Path(path) / "config.json").is_file():
            subfolder = None  # a bare model directory
        else:
            raise ModelError(f"{path!r} has no {subfolder}/ subfolder (expected the diffusers DiT pipeline layout)")
    if local:
        check_safetensors(Path(path) / (subfolder or ""))
    try:
        model = cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except (OSError, EnvironmentError, ValueError) as e:
        import re
        for named in re.findall(r"'([^']+\.safetensors)'", str(e))[:1]:   # a cached hub file diffusers could not read
            check_safetensors(Path(named).parent)
        how = ("set model.allow_download=true to fetch it, or point model.generator at a local "
               "directory in the diffusers layout" if not allow_download else "check the id and your network")
        raise ModelError(f"cannot load {cls.__name__} from {spec!r}"
                         f"{' (subfolder ' + subfolder + ')' if subfolder else ''}: "
                         f"{str(e).splitlines()[0][:300]}. {how}") from None
    folder = Path(path) / subfolder if (local and subfolder) else Path(path)
    if not local:
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(spec, allow_patterns=list(diffusers_files(subfolder).values()),
                                            local_files_only=True)) / (subfolder or "")
        except Exception:  # pragma: no cover - hash is informative only
            folder = Path("/nonexistent")
    return model, path, folder


def torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def generator_parts(generator: str, vae: str | None = None) -> list[tuple[str, str, str | None]]:
    """(role, spec, subfolder) of each model :func:`load_generator` loads: the transformer from the
    generator's ``transformer/``; the VAE from ``vae`` (its root, or its ``vae/`` where a local
    directory has one), else from the generator's ``vae/``. ``mgd_ray.hub`` derives what to download
    from this, so fetching and loading cannot drift apart."""
    vae_spec, vae_sub = (vae, None) if vae else (generator, "vae")
    if vae and resolve_model_path(vae)[1] and (Path(resolve_model_path(vae)[0]) / "vae").is_dir():
        vae_sub = "vae"
    return [("transformer", generator, "transformer"), ("vae", vae_spec, vae_sub)]


def load_generator(generator: str, vae: str | None = None, *, allow_download: bool = False,
                   dtype: str = "float32", device: str = "cpu"):
    """-> (transformer, vae, ModelInfo); both models frozen in eval mode on ``device``."""
    import diffusers
    from diffusers import AutoencoderKL

    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    td = torch_dtype(dtype)
    (_, t_spec, t_sub), (_, vae_spec, vae_sub) = generator_parts(generator, vae)
    transformer, path, tfolder = _load(diffusers.DiTTransformer2DModel, t_spec, t_sub, allow_download, td)
    vae_model, _, vfolder = _load(AutoencoderKL, vae_spec, vae_sub, allow_download, td)
    for m in (transformer, vae_model):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    info = describe(transformer, vae_model, source=generator if not vae else f"{generator} + {vae}",
                    path=path, tfolder=tfolder, vfolder=vfolder)
    return transformer, vae_model, info


def describe(transformer, vae, source="(in memory)", path="", tfolder=None, vfolder=None) -> ModelInfo:
    """ModelInfo of loaded models: their configs, plus a hash of their weights."""
    return info_from_configs(
        transformer.config, vae.config, source=source, path=str(path),
        facts_from="loaded model (configs of the loaded weights)",
        transformer_sha256=_sha256_dir(Path(tfolder)) if tfolder else "in-memory",
        vae_sha256=_sha256_dir(Path(vfolder)) if vfolder else "in-memory")


# ---- reading a generator without loading it; loading only the VAE ---------------------------
def _model_folder(spec: str, subfolder: str | None, allow_download: bool, weights: bool = True) -> Path:
    """The folder ``_load`` would read ``config.json`` (and, with ``weights``, the weight files)
    from: a local directory (its ``subfolder``, or its root when that has no ``subfolder``/ but a
    ``config.json``), or the hub snapshot in the cache (downloaded when allowed: the config only,
    unless ``weights``). Checks the files are there; reads no weights."""
    from diffusers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    path, local = resolve_model_path(spec, allow_download)
    if local:
        folder = Path(path)
        if subfolder and (folder / subfolder).is_dir():
            folder = folder / subfolder
        elif subfolder and not (folder / CONFIG_NAME).is_file():
            raise ModelError(f"{path!r} has no {subfolder}/ subfolder (expected the diffusers DiT pipeline layout)")
    else:
        from huggingface_hub import snapshot_download
        p = f"{subfolder}/" if subfolder else ""      # what from_pretrained opens (mgd_ray.hub lists the same)
        stem, ext = SAFETENSORS_WEIGHTS_NAME.rsplit(".", 1)
        patterns = [p + CONFIG_NAME] + ([p + SAFETENSORS_WEIGHTS_NAME, p + SAFE_WEIGHTS_INDEX_NAME,
                                         f"{p}{stem}-*-of-*.{ext}"] if weights else [])
        try:
            folder = Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=not allow_download))
        except Exception as e:  # noqa: BLE001 - not cached / not found: one message with the fix
            how = ("set model.allow_download=true to fetch it, or point model.generator at a local "
                   "directory in the diffusers layout" if not allow_download else "check the id and your network")
            raise ModelError(f"cannot find {spec!r}{' (subfolder ' + subfolder + ')' if subfolder else ''}: "
                             f"{str(e).splitlines()[0][:300]}. {how}") from None
        folder = folder / subfolder if subfolder else folder
    if not (folder / CONFIG_NAME).is_file():
        raise ModelError(f"model {spec!r}: no {CONFIG_NAME} in {folder}")
    if weights:
        check_safetensors(folder)
        index = folder / SAFE_WEIGHTS_INDEX_NAME
        named = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())) if index.is_file() else []
        missing = [n for n in named if not (folder / n).is_file()]
        if missing or not (named or any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
            raise ModelError(f"model {spec!r}: no weights in {folder}" + (f" (missing {', '.join(missing)})"
                             if missing else "") + ": copy or fetch the model again (`mgd-ray models fetch JOB`)")
    return folder


def _config_as_loaded(cls, folder: Path) -> dict:
    """``cls.from_pretrained(folder).config`` without building the module: the config file's
    settings that ``cls.__init__`` takes (diffusers' ``extract_init_dict``, which drops a legacy
    class's extra keys) over the defaults of its signature (what ``register_to_config`` records)."""
    import inspect
    init, _, _ = cls.extract_init_dict(cls.load_config(str(folder)))
    ignore = set(getattr(cls, "ignore_for_config", []))
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    cfg = {p.name: p.default for p in params
           if p.name not in ignore and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    cfg.update(init)
    cfg["_class_name"] = cls.__name__
    return cfg


def read_generator_info(generator: str, vae: str | None = None, *, allow_download: bool = False) -> ModelInfo:
    """The ModelInfo :func:`load_generator` returns (same configs, same weight-file hashes), read
    from the config files and hashed weight files: no module is built and no weight is held in
    memory (the driver's preflight: DiT-XL/2 alone is 3 GB in float32). Missing, truncated or
    unreadable files raise ModelError as a load would."""
    import diffusers
    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (_, t_spec, t_sub), (_, vae_spec, vae_sub) = generator_parts(generator, vae)
    tfolder = _model_folder(t_spec, t_sub, allow_download)
    vfolder = _model_folder(vae_spec, vae_sub, allow_download)
    return info_from_configs(
        _config_as_loaded(diffusers.DiTTransformer2DModel, tfolder),
        _config_as_loaded(diffusers.AutoencoderKL, vfolder),
        source=generator if not vae else f"{generator} + {vae}", path=resolve_model_path(t_spec, allow_download)[0],
        facts_from="config files beside the weights (weights hashed, not loaded)",
        transformer_sha256=_sha256_dir(tfolder), vae_sha256=_sha256_dir(vfolder))


def load_vae(generator: str, vae: str | None = None, *, allow_download: bool = False,
             dtype: str = "float32", device: str = "cpu"):
    """-> (vae, ModelInfo): the VAE :func:`load_generator` would load, frozen in eval mode on
    ``device``, without the transformer (an encoder needs only the VAE). The info's transformer
    facts (latent size, classes) come from its config file; its weights are neither read nor hashed."""
    import diffusers
    from diffusers import AutoencoderKL

    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (_, t_spec, t_sub), (_, vae_spec, vae_sub) = generator_parts(generator, vae)
    vae_model, _, vfolder = _load(AutoencoderKL, vae_spec, vae_sub, allow_download, torch_dtype(dtype))
    vae_model.requires_grad_(False)
    vae_model.eval()
    vae_model.to(device)
    tfolder = _model_folder(t_spec, t_sub, allow_download, weights=False)
    info = info_from_configs(
        _config_as_loaded(diffusers.DiTTransformer2DModel, tfolder), vae_model.config,
        source=generator if not vae else f"{generator} + {vae}", path=resolve_model_path(t_spec, allow_download)[0],
        facts_from="transformer: config file (not loaded); vae: loaded model", vae_sha256=_sha256_dir(vfolder))
    return vae_model, info


# ---- builders (tests and the prior trainer use the real classes) ---------------------------
def build_dit(num_classes: int, latent_channels: int = 4, latent_size: int = 4, *, patch_size: int = 2,
              num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, learned_sigma: bool = True):
    from diffusers import DiTTransformer2DModel
    return DiTTransformer2DModel(
        num_attention_heads=num_heads, attention_head_dim=head_dim, in_channels=latent_channels,
        out_channels=latent_channels * (2 if learned_sigma else 1), num_layers=num_layers,
        sample_size=latent_size, patch_size=patch_size, num_embeds_ada_norm=num_classes,
        norm_num_groups=min(32, num_heads * head_dim))


def build_vae(image_channels: int = 1, block_out_channels=(16, 32), latent_channels: int = 4,
              layers_per_block: int = 1, norm_num_groups: int = 8, sample_size: int = 8,
              scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=image_channels, out_channels=image_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), latent_channels=latent_channels,
        layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, sample_size=sample_size,
        scaling_factor=scaling_factor)


def tiny_models(num_classes: int = 10, image_channels: int = 1, image_size: int = 8, seed: int = 0,
                learned_sigma: bool = True):
    """A tiny random DiT + VAE of the real classes (for tests): latent 4 x image_size/2."""
    import torch
    torch.manual_seed(seed)
    vae = build_vae(image_channels, (16, 32), 4, sample_size=image_size, scaling_factor=0.5)
    dit = build_dit(num_classes, 4, image_size // 2, patch_size=2 if image_size >= 8 else 1,
                    learned_sigma=learned_sigma)
    return dit.eval(), vae.eval()


def save_generator(transformer, vae, path: str | Path, legacy_class_name: bool = False) -> Path:
    """Write the diffusers DiT pipeline layout (transformer/, vae/, model_index.json)."""
    path = Path(path)
    transformer.save_pretrained(path / "transformer")
    vae.save_pretrained(path / "vae")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"]}, indent=1))
    if legacy_class_name:  # what the facebook/DiT-XL-2-256 hub repo ships
        cfg_path = path / "transformer" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["_class_name"] = "Transformer2DModel"
        cfg_path.write_text(json.dumps(cfg, indent=1))
    return path


def encode_latents(vae, images, scaling_factor: float):
    """images (B, C, H, W) in [-1, 1] -> z = s * posterior mean (B, c, h, w)."""
    return vae.encode(images).latent_dist.mean * scaling_factor


def decode_latents(vae, z, scaling_factor: float):
    """z (B, c, h, w) -> images (B, C, H, W) in [-1, 1] (clamped)."""
    return vae.decode((z / scaling_factor).to(vae.dtype)).sample.clamp(-1, 1)
