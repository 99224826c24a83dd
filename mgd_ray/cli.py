"""``mgd-ray``: a thin typer CLI over importable functions. Errors become one clear message and
a non-zero exit code here, and only here."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mgd_ray: Ray-distributed dataset distillation with ManifoldGD.")
prior_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the project's small priors.")
app.add_typer(prior_app, name="prior")

SET_HELP = "Override a job key, e.g. --set generate.ipc=10 (repeatable; values are YAML scalars)."


def _fail(e, code: int = 2):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code)


def _user_errors():
    from .config import JobError
    from .models import ModelError
    from .pipeline.store import LeaseHeld, LeaseLost
    errs = [JobError, ModelError, FileNotFoundError, LeaseHeld, LeaseLost]
    try:
        from .data import DataError
        errs.append(DataError)
    except Exception:  # pragma: no cover
        pass
    return tuple(errs)


EXIT_HELP = ("Exit status: 0 = complete, or the --stages asked for finished; 1 = the run did not complete "
             "(manifest.json says why; rerun the same command to continue); 2 = a user error (job file, data, "
             "model, settings that differ from the outputs already in output.dir, output.dir in use).")


@app.command(epilog=EXIT_HELP)
def distill(job: str = typer.Argument(..., help="job file (YAML)"),
            set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
            dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
            stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated subset of "
                                                 "encode,coreset,generate,evaluate"),
            fresh: Optional[str] = typer.Option(None, "--fresh", help="discard this stage's outputs and every "
                                                "later stage's in output.dir, then run (after a settings change)")):
    """Run a distillation job (also: python -m mgd_ray.distill JOB)."""
    import signal
    import traceback

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)   # `ray job stop`: end with a final status, like Ctrl-C
    try:
        from .config import load_job
        from .pipeline.driver import run_job, setup_logging
        from .pipeline.stage import STAGE_NAMES, parse_stages
        setup_logging()
        cfg = load_job(job, set_)
        if fresh is not None and (fresh not in STAGE_NAMES):
            from .config import JobError
            raise JobError(f"--fresh takes one stage: {', '.join(STAGE_NAMES)} (got {fresh!r})")
        out = run_job(cfg, parse_stages(stages), dry_run=dry_run, fresh=fresh)
    except _user_errors() as e:
        _fail(e)
    except KeyboardInterrupt:
        _fail("interrupted (manifest.json records status 'failed' if the run had started). Rerun the same "
              "command to continue: committed work is kept", 1)
    except Exception as e:  # noqa: BLE001 - an unexpected error: the traceback, then what to do
        traceback.print_exc()
        _fail(f"{type(e).__name__}: {e}\nThe run stopped (manifest.json records status 'failed' and the reason if "
              f"the run had started). Committed work is kept; rerun the same command once the cause is fixed.", 1)
    if dry_run:
        typer.echo(json.dumps(out["plan"], indent=1))
        ev = (out["plan"].get("estimate") or {}).get("evaluation") or {}
        if ev.get("dominates"):                     # the bill before the run: said where a person looks
            typer.echo(f"warning: {ev['message']}", err=True)
        return
    if out.get("status") == "complete":
        return
    typer.echo(f"job {out.get('name')}: status {out.get('status')!r}: {out.get('reason', '')}", err=True)
    if not out.get("requested_done"):
        raise typer.Exit(1)


@app.command()
def status(out: str = typer.Argument(..., help="a job's output.dir (local or s3://)"),
           storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help="k=v for fsspec")):
    """Summarise a finished or running job from its files."""
    from .pipeline.report import status_text
    try:
        typer.echo(status_text(out, _kv(storage_option)))
    except (FileNotFoundError, ValueError) as e:
        _fail(e)


@app.command()
def export(out: str = typer.Argument(..., help="a job's output.dir"),
           dest: str = typer.Argument(..., help="destination directory"),
           format: str = typer.Option("imagefolder", "--format", help="imagefolder | hf"),
           storage_option: Optional[List[str]] = typer.Option(None, "--storage-option")):
    """Export the distilled images: imagefolder (DIR/<class_name>/<sample_id>.png) or hf (a Hugging
    Face dataset directory: data/*.parquet + a README.md dataset card)."""
    from .pipeline.report import export_hf, export_imagefolder
    exporters = {"imagefolder": export_imagefolder, "hf": export_hf}
    if format not in exporters:
        _fail(ValueError(f"unknown --format {format!r}; supported: {', '.join(exporters)}"))
    try:
        n = exporters[format](out, dest, _kv(storage_option))
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(f"wrote {n} images under {dest}")


@app.command()
def report(out: str = typer.Argument(..., help="a job's output.dir (local or s3://)"),
           storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help="k=v for fsspec")):
    """(Re)build OUT/report.html, the job's self-contained report page, from its files."""
    from .pipeline.report_page import write_report
    try:
        typer.echo(f"wrote {write_report(out, _kv(storage_option))}")
    except (FileNotFoundError, ValueError) as e:
        _fail(e)


@prior_app.command("train")
def prior_train(job: str, set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
                out: Optional[str] = typer.Option(None, "--out", help="output dir (default: the package's priors/)")):
    """Train a small AutoencoderKL + class-conditional DiT on a dataset's train split."""
    from .prior import main_train
    try:
        main_train(job, out, set_)
    except _user_errors() as e:
        _fail(e)


@prior_app.command("evaluate")
def prior_evaluate(job: str, set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
                   prior_dir: Optional[str] = typer.Option(None, "--prior", help="prior dir (default: shipped)"),
                   samples: int = typer.Option(1000, help="class-conditional samples to score"),
                   cfg_scale: float = typer.Option(4.0, help="CFG scale of the scored samples"),
                   classifier_epochs: Optional[int] = typer.Option(None, help="real-data classifier epochs"),
                   classifier: Optional[str] = typer.Option(None, "--classifier",
                                                            help="reuse a classifier dir saved by train_classifier")):
    """Measure a prior: real-data classifier, VAE reconstructions, sample fidelity, sample grid."""
    from .prior_eval import main_evaluate
    try:
        main_evaluate(job, prior_dir, set_, samples, cfg_scale, classifier_epochs, classifier)
    except _user_errors() as e:
        _fail(e)


models_app = typer.Typer(no_args_is_help=True, help="Fetch the Hugging Face models a job loads, and prove them.")
app.add_typer(models_app, name="models")


@models_app.command("fetch", epilog="Exit status: 0 = every model the jobs load is in the cache and loads offline; "
                    "2 = something is missing, differs from the hub, or does not load (the message names it).")
def models_fetch(jobs: List[str] = typer.Argument(..., help="job file(s) (YAML); their models are fetched together"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
                 dry_run: bool = typer.Option(False, "--dry-run", help="print what would be fetched (JSON) and exit"),
                 check_only: bool = typer.Option(False, "--check-only", help="download nothing; check the cache")):
    """Download exactly the files the job's loader opens (huggingface_hub snapshot_download with
    allow_patterns; safetensors only), then check them offline: files, sizes, sha256, a load
    through mgd_ray.models.load_generator."""
    from .config import load_job
    from .hub import fetch_models, plan
    try:
        cfgs = [load_job(j, set_) for j in jobs]
        if dry_run:
            typer.echo(json.dumps(plan(cfgs), indent=1))
            return
        fetch_models(cfgs, download=not check_only, echo=typer.echo)
    except _user_errors() as e:
        _fail(e)


def _kv(items) -> dict:
    import yaml
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        out[k] = yaml.safe_load(v)
    return out


def main():
    app()


if __name__ == "__main__":
    main()
