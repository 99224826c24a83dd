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
CPU_FLOPS = 25e9                  # per CPU core, order of magnitude (a 2-core box: ~50 GFLOP/s); the plan's CPU
                                  # hours are core-hours, as the evaluation's measured CPU rates are

# ---- the evaluation's throughput model (plan/cost.py; benchmarks/eval_throughput.py) -----------
# GPU: ResNet-18 training on one A100, from FFCV's published ImageNet table (github.com/libffcv/
# ffcv-imagenet README: rn18_configs/rn18_88_epochs.yaml, 88 epochs in 187.3 min on 1 x A100,
# top-1 72.4 %). That run: batch 1024 with drop_last, fp16 autocast + channels_last, progressive
# resizing 160 -> 192 px (train_imagenet.py get_resolution: start_ramp 65, end_ramp 76, rounded to
# multiples of 32), one validation pass at the end (inside the 187.3 min: the rate is a lower bound).
FFCV_RN18_RUN = {"epochs": 88, "minutes": 187.3, "batch": 1024, "min_res": 160, "max_res": 192,
                 "start_ramp": 65, "end_ramp": 76}
FFCV_SOURCE = ("FFCV ImageNet table (github.com/libffcv/ffcv-imagenet README, rn18_88_epochs.yaml: ResNet-18, "
               "88 epochs in 187.3 min on 1 x A100, fp16 autocast, 160-192 px)")
# fp16 -> TF32: the students train in fp32 (TF32 convolutions), so the fp16 rate is divided by the
# A100 mixed-precision speedup NVIDIA publishes for ResNet-50 (github.com/NVIDIA/DeepLearningExamples
# PyTorch/Classification/ConvNets/README.md, "Training performance: NVIDIA DGX A100 (8x A100 80GB)",
# pytorch-20.12 container: 15,977 img/s mixed precision, 7,365 img/s TF32 on 8 GPUs, "2.16 x").
NVIDIA_RN50_A100_AMP_IMAGES_PER_S = 15977 / 8
NVIDIA_RN50_A100_TF32_IMAGES_PER_S = 7365 / 8
NVIDIA_RN50_SOURCE = ("NVIDIA DeepLearningExamples PyTorch ConvNets README, DGX A100 (8x A100 80GB): ResNet-50 "
                      "15,977 img/s mixed precision / 7,365 img/s TF32 per 8 GPUs")


def ffcv_resolution(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """FFCV's training resolution at ``epoch`` (ffcv-imagenet train_imagenet.py ``get_resolution``)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = min_res + (max_res - min_res) * (epoch - start_ramp) / (end_ramp - start_ramp)
    return int(round(interp / 32)) * 32


def a100_resnet18_train_images_per_s(size: int = 224) -> tuple[float, str]:
    """Images/s of a ResNet-18 training step (fp32 with TF32 convolutions) on one A100 at ``size``
    px, and how it follows from the published figures above: FFCV's images per second over its
    whole 88-epoch run, scaled by pixels from its mean training resolution to ``size`` (a
    convolution's FLOPs grow with the pixels), divided by NVIDIA's A100 mixed-precision speedup."""
    r = FFCV_RN18_RUN
    per_epoch = (IMAGENET1K_TRAIN // r["batch"]) * r["batch"]            # drop_last
    res = [ffcv_resolution(e, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"]) for e in range(r["epochs"])]
    mean_px2 = sum(x * x for x in res) / len(res)
    fp16 = r["epochs"] * per_epoch / (r["minutes"] * 60)
    speedup = NVIDIA_RN50_A100_AMP_IMAGES_PER_S / NVIDIA_RN50_A100_TF32_IMAGES_PER_S
    rate = fp16 * mean_px2 / (size * size) / speedup
    text = (f"{FFCV_SOURCE}: {r['epochs']} x {per_epoch:,} images / {r['minutes']} min = {fp16:,.0f} img/s fp16 at a "
            f"mean {mean_px2 ** 0.5:.0f} px; x ({mean_px2 ** 0.5:.0f}/{size})^2 by pixels; / {speedup:.2f} fp16->TF32 "
            f"({NVIDIA_RN50_SOURCE}) = {rate:,.0f} img/s. An A100 figure: used for any GPU (an H100 is faster, so "
            "the hours are an upper bound there); a batch of 64 on small sets runs below FFCV's batch 1024")
    return rate, text


# CPU: measured on the project's 2-core box by ``benchmarks/eval_throughput.py`` (torchvision
# resnet18, batch 16, 224 px, one thread, timed in CPU seconds: per-core figures; the report is
# benchmarks/reports/eval_throughput.md, and tests/test_plan.py checks these equal its JSON).
# Images/s of: a training step; a training step with a frozen ResNet-18 teacher's forward; a test forward.
EVAL_CPU_RESNET18_224 = {"train": 4.812, "train_with_teacher": 3.652, "test_forward": 17.319}
EVAL_CPU_SOURCE = ("per core: python -m benchmarks.eval_throughput (torchvision 0.29.1), 2026-12-07 "
                   "(benchmarks/reports/eval_throughput.md)")


def is_sd_vae(info) -> bool:
    """The Stable Diffusion VAE architecture, whose FLOPs are in the table above."""
    return (tuple(getattr(info, "vae_block_out_channels", ()) or ()) == (128, 256, 512, 512)
            and getattr(info, "vae_layers_per_block", 0) == 2)
