"""``python -m mgd_ray.distill JOB.yaml [--set k=v ...] [--dry-run] [--stages ...] [--fresh STAGE]``

The front door: the same command as ``mgd-ray distill JOB.yaml ...`` (``mgd_ray.cli``). The job's
walk from here to ``results.json`` is ``mgd_ray.pipeline.driver.run_job``. Nothing imports this
module.
"""

import sys

if __name__ == "__main__":
    from mgd_ray.cli import app
    app(args=["distill", *sys.argv[1:]], prog_name="python -m mgd_ray.distill")
