"""Per-forward cost used by ``--dry-run`` estimates, with where the number comes from.

GPU: from our own measurement when a report exists (``reports/gpu_throughput.json``), else
from the FLOP count of the model (DiT-XL/2 at 256 px: 118.6 GFLOPs per forward as reported in
the DiT paper — often quoted as ~237 GFLOP counting multiply and add separately) at an assumed
40 % of an H100/H200's dense bf16 peak (989 TFLOP/s).
CPU: 2 * params * tokens FLOPs per forward at an assumed 50 GFLOP/s (2 cores, measured order).
"""

from __future__ import annotations

import json
from pathlib import Path

REPORTS = Path(__file__).parent / "reports"


def dit_forward_flops(info) -> float:
    """Approximate FLOPs (multiply + add) of one DiT forward for one image."""
    if info.latent_size == 32 and info.num_classes == 1000 and info.latent_channels == 4:
        return 237e9  # DiT-XL/2 at 256 px (118.6 GMACs)
    return 2.0 * 5e6 * (info.latent_size // 2) ** 2  # small priors: ~5 M params x tokens


def forward_seconds_estimate(info, gpu: bool, batch_size: int) -> tuple[float, str]:
    flops = dit_forward_flops(info)
    if gpu:
        rep = REPORTS / "gpu_throughput.json"
        if rep.is_file():
            r = json.loads(rep.read_text())
            if "seconds_per_forward_per_image" in r:
                return float(r["seconds_per_forward_per_image"]), f"measured: {rep.name}"
        return flops / (0.4 * 989e12), "FLOP count (237 GFLOP/forward for DiT-XL/2) at 40% of 989 TFLOP/s bf16"
    return flops / 50e9, "FLOP count at an assumed 50 GFLOP/s CPU"
