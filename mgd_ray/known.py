"""Known facts that ``--dry-run`` falls back to when the data or the model cannot be reached.

A dry run first tries the real thing: it lists the data source and reads the model configs
(from a local directory or the Hugging Face cache). Only when that is impossible (an
``s3://`` bucket you cannot reach from your laptop, a hub id that is not in the local cache)
does it use the tables below, and the plan says which numbers came from where.

Every number here has a source; nothing is guessed. Where only bounds are known (the size of an
ImageNet subset's train split depends on which classes it holds), the bound is given and the
plan marks it as a bound.

Datasets
--------
ILSVRC-2012 (ImageNet-1K), Russakovsky et al., "ImageNet Large Scale Visual Recognition
Challenge", IJCV 2015, Table 2 (image classification): 1,000 classes; train 1,281,167 images
with 732-1,300 per class; val 50,000 images, exactly 50 per class. (The same totals are in the
ILSVRC-2012 devkit and in e.g. PaddleClas's dataset page: 1281167 / 50000.)

ImageNette / ImageWoof / ImageNet-100 are read here from the ImageNet-1K folders (the IDC /
Minimax / MGD3 protocol: the subset's classes of the ILSVRC-2012 train split, evaluated on the
same classes of the ILSVRC-2012 val split). So their val split is exactly 50 x classes
(500 / 500 / 5,000) and their train split lies between 732 x classes and 1,300 x classes.
(The fastai distributions ``imagenette2`` / ``imagewoof2`` are a different, 70/30 re-split of
the same images, e.g. 9,469 train images for imagenette2 per the Hugging Face
``frgfm/imagenette`` dataset_infos.json; our jobs do not use them.)

Models
------
facebook/DiT-XL-2-256 (Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023;
the hub repo's ``transformer/config.json``): latent 4 x 32 x 32, patch 2, 28 layers, hidden
1152 (16 heads x 72), 1,000 classes (label table 1,001 rows: the last is the CFG null class),
``out_channels`` 8 = learned sigma. FLOPs per forward: 118.6 GFLOPs in the DiT paper (Table 4),
which counts multiply-accumulates; 237 GFLOP counting multiply and add separately. We re-counted
it with ``torch.utils.flop_counter.FlopCounterMode`` on diffusers 0.42.1's
``DiTTransformer2DModel`` built from that config: 237.3 GFLOP.

stabilityai/sd-vae-ft-mse (the hub repo's ``config.json``): ``AutoencoderKL`` with
block_out_channels (128, 256, 512, 512), 2 layers per block, 4 latent channels, downsampling
8x (256 px -> 32 x 32 latents); scaling factor 0.18215 (the Stable Diffusion value, Rombach et al.
2022; also diffusers' ``AutoencoderKL`` default for a config without ``scaling_factor``). FLOPs at 256 x 256, counted
with FlopCounterMode on diffusers 0.42.1 (batch 1, posterior mean only): encode 272.7 GFLOP,
decode 622.2 GFLOP.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- datasets ---------------------------------------------------------------------------------
ILSVRC2012_SOURCE = ("ILSVRC-2012: Russakovsky et al., IJCV 2015, Table 2 (train 1,281,167, 732-1,300 per "
                     "class; val 50,000, 50 per class)")
IMAGENET1K_TRAIN = 1_281_167
IMAGENET1K_VAL = 50_000
IMAGENET1K_CLASSES = 1000
IMAGENET_TRAIN_PER_CLASS_MIN = 732
IMAGENET_TRAIN_PER_CLASS_MAX = 1300
IMAGENET_VAL_PER_CLASS = 50

# class lists whose classes are ImageNet-1K wnids, read from the ImageNet-1K folder layout
IMAGENET_FAMILY = ("imagenet1k", "imagenette", "imagewoof", "imagenet100")


@dataclass(frozen=True)
class SplitFacts:
    """Known sizes of a dataset's splits for a given class selection."""

    classes: int
    train: int                 # exact when train_exact, else the upper bound
    train_min: int
    train_exact: bool
    test: int
    test_exact: bool
    source: str


def imagenet_split_facts(n_classes: int) -> SplitFacts:
    """Split sizes of ``n_classes`` ImageNet-1K classes read from the ILSVRC-2012 folders.

    All 1,000 classes: the exact published totals. A subset: val exact (50 per class), train
    bounded by 732..1,300 per class.
    """
    if n_classes <= 0:
        raise ValueError("n_classes must be > 0")
    if n_classes == IMAGENET1K_CLASSES:
        return SplitFacts(IMAGENET1K_CLASSES, IMAGENET1K_TRAIN, IMAGENET1K_TRAIN, True, IMAGENET1K_VAL, True,
                          ILSVRC2012_SOURCE)
    return SplitFacts(n_classes, IMAGENET_TRAIN_PER_CLASS_MAX * n_classes, IMAGENET_TRAIN_PER_CLASS_MIN * n_classes,
                      False, IMAGENET_VAL_PER_CLASS * n_classes, True,
                      ILSVRC2012_SOURCE + f"; {n_classes} of its classes")


# ---- models -----------------------------------------------------------------------------------
DIT_XL_2_256 = "facebook/DiT-XL-2-256"
SD_VAE_FT_MSE = "stabilityai/sd-vae-ft-mse"
SD_VAE_FT_EMA = "stabilityai/sd-vae-ft-ema"

# The parts of the hub configs the plan reads (values as published in the hub repos).
TRANSFORMER_CONFIGS = {
    DIT_XL_2_256: {"_class_name": "Transformer2DModel", "in_channels": 4, "out_channels": 8, "sample_size": 32,
                   "patch_size": 2, "num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72,
                   "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero"},
}
_SD_VAE = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
           "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "sample_size": 256,
           "scaling_factor": 0.18215}
VAE_CONFIGS = {SD_VAE_FT_MSE: _SD_VAE, SD_VAE_FT_EMA: _SD_VAE,
               DIT_XL_2_256: _SD_VAE}   # the DiT pipeline repo ships an SD VAE in vae/

# FLOPs (multiply + add counted separately) per image
DIT_XL_2_256_FLOPS = 237.3e9
DIT_FLOPS_SOURCE = ("237 GFLOP per DiT-XL/2 forward at 256 px (DiT paper Table 4: 118.6 GMACs; re-counted with "
                    "torch FlopCounterMode on diffusers' DiTTransformer2DModel: 237.3 GFLOP)")
SD_VAE_ENCODE_FLOPS_256 = 272.7e9
SD_VAE_DECODE_FLOPS_256 = 622.2e9
SD_VAE_FLOPS_SOURCE = ("SD VAE at 256 px: encode 272.7 / decode 622.2 GFLOP per image, counted with torch "
                       "FlopCounterMode on diffusers 0.42.1 AutoencoderKL (128/256/512/512, 2 layers per block)")

# Peak dense throughput of the GPUs the cluster configs use (vendor datasheets), FLOP/s.
H100_SXM_BF16_DENSE = 989e12      # NVIDIA H100 SXM datasheet: 1,979 TFLOPS bf16 "with sparsity" -> 989.5 dense
H100_SXM_TF32_DENSE = 494.7e12    # same datasheet: 989 TFLOPS tf32 with sparsity -> 494.7 dense
GPU_PEAK_SOURCE = "NVIDIA H100 SXM datasheet (dense = half the 'with sparsity' figure)"

# Assumptions of the cost estimate (stated in every plan that uses them; none is a measurement).
GPU_UTILISATION = 0.40            # DiT and VAE: fraction of the bf16 dense peak reached
STUDENT_UTILISATION = 0.20        # evaluation students: fp32 training, TF32 convolutions, batch 64
CPU_FLOPS = 50e9                  # a 2-core CPU, order of magnitude


def is_sd_vae(info) -> bool:
    """The Stable Diffusion VAE architecture, whose FLOPs are in the table above."""
    return (tuple(getattr(info, "vae_block_out_channels", ()) or ()) == (128, 256, 512, 512)
            and getattr(info, "vae_layers_per_block", 0) == 2)
