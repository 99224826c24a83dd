"""The plan's model facts: the generator's and the VAE's ``config.json`` from a local directory or
the Hugging Face cache (no weights, nothing downloaded), else the published configs in
``mgd_ray.known``; a model that is neither raises ``ModelError`` with the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...config import JobConfig


def _hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    try:
        from huggingface_hub import constants
        return constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())


def _config_file(spec: str, subfolder: str | None) -> tuple[dict | None, str]:
    """(config dict or None, where) for ``spec`` = a prior/local dir or a hub id (cache only)."""
    from ...models import resolve_model_path
    path, local = resolve_model_path(spec)
    if local:
        d = Path(path)
        for cand in ([d / subfolder / "config.json"] if subfolder else []) + [d / "config.json"]:
            if cand.is_file():
                return _read_json(cand), f"config file {cand}"
        return None, f"no config.json under {d}"
    try:
        from huggingface_hub import try_to_load_from_cache
        fname = f"{subfolder}/config.json" if subfolder else "config.json"
        hit = try_to_load_from_cache(spec, fname, cache_dir=_hub_cache_dir())
    except Exception:  # noqa: BLE001 - an id the hub client rejects is simply "not cached"
        hit = None
    if isinstance(hit, str) and os.path.isfile(hit):
        return _read_json(Path(hit)), f"config file in the Hugging Face cache ({hit})"
    return None, f"not in the Hugging Face cache ({_hub_cache_dir()})"


def model_facts(job: JobConfig):
    """Model facts from config files (local dir / HF cache), else the known table; never downloads."""
    from ... import known
    from ...models import ModelError, info_from_configs, resolve_model_path
    gen, vae = job.model.generator, job.model.vae
    tc, twhere = _config_file(gen, "transformer")
    if vae:
        vae_local = resolve_model_path(vae)[1]
        vc, vwhere = _config_file(vae, "vae" if vae_local else None)
    else:
        vc, vwhere = _config_file(gen, "vae")
    if tc is None and gen in known.TRANSFORMER_CONFIGS:
        tc, twhere = known.TRANSFORMER_CONFIGS[gen], "known table (mgd_ray/known.py)"
    vkey = vae or gen
    if vc is None and vkey in known.VAE_CONFIGS:
        vc, vwhere = known.VAE_CONFIGS[vkey], "known table (mgd_ray/known.py)"
    if tc is None or vc is None:
        missing = gen if tc is None else (vae or f"{gen} (vae/)")
        raise ModelError(
            f"cannot plan: model {missing!r} is not a local directory, is {twhere if tc is None else vwhere}, "
            f"and is not one of the known models ({', '.join(sorted(known.TRANSFORMER_CONFIGS))}). Fix: fetch it "
            f"once (`mgd-ray models fetch JOB.yaml`), or set model.allow_download=true so the run may fetch it, or "
            f"point model.generator at a local directory in the diffusers DiT layout (transformer/, vae/).")
    path = resolve_model_path(gen)[0]
    src = gen if not vae else f"{gen} + {vae}"
    return info_from_configs(tc, vc, source=src, path=path,
                             facts_from=f"transformer: {twhere}; vae: {vwhere}")
