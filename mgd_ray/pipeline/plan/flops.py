"""FLOP counts for the cost estimate: the published counts where the architecture is known
(``mgd_ray.known``), else counted with ``torch.utils.flop_counter`` on the meta device (nothing
allocated, no weights needed)."""

from __future__ import annotations

import functools
import logging

from ... import known

log = logging.getLogger("mgd_ray")


def dit_forward_flops(info) -> tuple[float, str]:
    """FLOPs (multiply + add) of one DiT forward for one image, and where the number comes from:
    the published count for DiT-XL/2's config, else counted on this config (in the ``isolated``
    child process: the driver never imports torch)."""
    if info.transformer_config == known.TRANSFORMER_CONFIGS[known.DIT_XL_2_256]:
        return known.DIT_XL_2_256_FLOPS, known.DIT_FLOPS_SOURCE
    from ... import isolated
    cfg = {k: v for k, v in info.transformer_config.items() if not k.startswith("_")}
    return (isolated.call(_count_dit, cfg, info.latent_size, info.latent_channels),
            "counted with torch FlopCounterMode on this DiT's config (meta device)")


def _count_dit(cfg: dict, s: int, c: int) -> float:
    import torch
    from diffusers import DiTTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        dit = DiTTransformer2DModel.from_config(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        dit(torch.zeros(2, c, s, s, device="meta"), timestep=torch.zeros(2, device="meta"),
            class_labels=torch.zeros(2, dtype=torch.long, device="meta"))
    return fc.get_total_flops() / 2


def vae_flops(info) -> tuple[float, float, str] | None:
    """(encode, decode) FLOPs per image and the source, from the VAE config."""
    if known.is_sd_vae(info):
        scale = (info.image_size / 256.0) ** 2   # convolutions dominate: FLOPs ~ pixels
        note = "" if info.image_size == 256 else f", scaled by pixels to {info.image_size} px"
        return known.SD_VAE_ENCODE_FLOPS_256 * scale, known.SD_VAE_DECODE_FLOPS_256 * scale, \
            known.SD_VAE_FLOPS_SOURCE + note
    vc = getattr(info, "vae_config", None)
    if not vc:
        return None
    try:
        from ... import isolated
        cfg = {k: v for k, v in vc.items() if not k.startswith("_")}
        enc, dec = isolated.call(_count_vae, cfg, info.image_size, info.image_channels, info.latent_channels,
                                 info.latent_size)
        return float(enc), float(dec), "counted with torch FlopCounterMode on this VAE's config (meta device)"
    except Exception as e:  # noqa: BLE001 - an estimate, never a failure
        log.info("dry run: could not count VAE FLOPs (%s)", e)
        return None


def _count_vae(cfg: dict, s: int, c: int, latent_channels: int, latent_size: int) -> tuple[float, float]:
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(cfg)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            vae.encode(torch.zeros(2, c, s, s, device="meta")).latent_dist.mean
        enc = fc.get_total_flops() / 2
        with FlopCounterMode(display=False) as fc:
            vae.decode(torch.zeros(2, latent_channels, latent_size, latent_size, device="meta")).sample
        dec = fc.get_total_flops() / 2
    return enc, dec


@functools.lru_cache(maxsize=128)        # the plan asks for the same student per protocol and for the reference
def student_flops(name: str, channels: int, num_classes: int, size: int) -> float | None:
    """Forward FLOPs per image of an evaluation student (counted on the meta device, in the
    ``isolated`` child process)."""
    try:
        from ... import isolated
        return isolated.call(_count_student, name, channels, num_classes, size)
    except Exception as e:  # noqa: BLE001
        log.info("dry run: could not count FLOPs of student %s (%s)", name, e)
        return None


def _count_student(name: str, channels: int, num_classes: int, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ...eval.students import build_student
    with torch.device("meta"):
        m = build_student(name, channels, num_classes, size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(torch.zeros(2, channels, size, size, device="meta"))
    return fc.get_total_flops() / 2
