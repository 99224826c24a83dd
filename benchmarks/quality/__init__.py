"""The quality benchmark: does it distil? Every number comes from the product itself
(``mgd_ray.distill.run_job``), one job per cell, all cells sharing one latent cache.

    python -m benchmarks.quality run jobs/fashion-mnist.yaml --part main --ipc 10
    python -m benchmarks.quality run jobs/fashion-mnist.yaml --part variants --ipc 10
    python -m benchmarks.quality run jobs/fashion-mnist.yaml --part ablation --ipc 10 --seeds 0
    python -m benchmarks.quality diagnose --ipc 10 --seeds 0,1
    python -m benchmarks.quality report --root out/bench-quality

Run from a checkout (the repository root). ``report`` reads whatever cells exist under
``--root`` and writes ``benchmarks/reports/quality-<dataset>.{json,md}`` plus plots.

Modules: ``cells`` (the catalogue), ``run`` (orchestration), ``diagnose`` (diagnostic sets scored
by the product's evaluation), ``maths`` (rows, paired gains, ablation centre), ``plots``,
``report`` (Markdown + JSON), ``__main__`` (the command line).
"""
