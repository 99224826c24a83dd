"""The distributed pipeline. The house, and the walk of a job through it.

Layout (what lives where)::

    cli.py                 the front door: `mgd-ray distill` (= python -m mgd_ray.distill), exit codes
    pipeline/driver.py     the walk: preflight -> lease -> settings check -> loop over STAGES -> status
    pipeline/stage.py      the stages as objects: name, key, outputs, completion, run(ctx), placement
      encode    -> runner.run_encode     Ray Data read -> encoder actor pool (workers.Encoder, VAE only)
      coreset   -> runner.run_coreset    Ray tasks, one per latents_per_task (workers: a part per class x seed)
      generate  -> generate.run_generate generator actors (generator.py) over the pure
                                         GenerationPipeline (generation.py); real-image methods: tasks
      evaluate  -> runner.run_evaluate   one Ray Train TorchTrainer running the trials (evaluate.py)
    pipeline/settings.py   key tools (placement left out, CPU threads in), unit footers (stage + class hash)
    pipeline/store.py      output.dir (local / s3://): atomic commits fenced by the lease's epoch
    pipeline/door.py       bad input refused before anything is written
    pipeline/plan/         the dry run: counts, resources (from each stage's placement), GPU-hours
    methods.py             what a method is (coreset, generates, guides, sections it reads, version)
    params.py              the core's parameter types (coreset, guidance, training): the one source
                           of names and defaults; config.py's sections derive from them
    method/                the maths, pure: coreset, diffusion schedule, guidance, sampler; each
                           choice (coreset kind, basis, schedule) is a table of implementations

The walk of ``python -m mgd_ray.distill JOB.yaml``:

1. ``cli.distill`` loads the job (bounded YAML, ``extends``, ``--set``) into ``config.JobConfig``.
2. ``driver.run_job``: ``preflight`` opens the source, runs ``door.door_checks`` (class sizes,
   output.dir vs data.root, weights files), reads the model and checks the label order; nothing
   has been written yet. Ray starts or attaches; a local output.dir on a multi-machine cluster
   is refused.
3. The lease on ``output.dir`` is taken (a compare-and-swap; its epoch goes into the job as
   ``output.lease_epoch``, so every worker's commits are fenced by it).
4. ``stage.check_settings`` compares every stage's recorded key (``<dir>/_SETTINGS.json``) with
   this job's (``--fresh STAGE`` first checks the stages before it, then discards it and the rest).
   Seeds and classes are not in those keys: each class has its own key (``stage.class_keys``).
5. ``run_stages`` loops over ``stage.stages_to_run(requested)``: each stage reuses what is
   committed under its key and each class's key (an added seed or class adds only its own work),
   runs the rest through its Ray wiring, and returns its manifest entry.
6. The final status (``complete`` / ``partial`` with ``requested_done`` / ``failed``) is written
   once — first of all when a signal stops the driver — then ``report.html``.
"""
