"""Job files: schema, overrides, error messages, CLI exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgd_ray.config import JobConfig, JobError, job_from_dict, load_job, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_method_resolution():
    j = job_from_dict({})
    assert j.method == "manifoldgd" and j.coreset_method == "divisive" and j.manifold_scale == 1.0
    m = job_from_dict({"method": "mgd3"})
    assert m.coreset_method == "kmeans" and m.manifold_scale == 0.0 and m.lam_mode == 0.1
    d = job_from_dict({"method": "dit"})
    assert d.coreset_method is None and d.lam_mode == 0.0 and d.generative
    r = job_from_dict({"method": "random-real"})
    assert r.coreset_method == "random" and not r.generative


def test_overrides_are_yaml_scalars():
    j = job_from_dict({}, ["generate.ipc=7", "generate.seeds=[3, 4]", "sampler.cfg_scale=1.5",
                           "data.classes=[a, b]", "model.allow_download=true", "output.dir=s3://b/p"])
    assert j.generate.ipc == 7 and j.generate.seeds == [3, 4] and j.sampler.cfg_scale == 1.5
    assert j.data.classes == ["a", "b"] and j.model.allow_download is True and j.output.dir == "s3://b/p"
    assert parse_override("a.b= 0.5")[1] == 0.5
    assert job_from_dict({}, ["guidance.lam_man=1e-3"]).guidance.lam_man == 1e-3  # YAML 1.1 string, coerced


def test_unknown_key_names_path():
    with pytest.raises(JobError) as e:
        job_from_dict({"sampler": {"stepz": 3}})
    assert "[sampler -> stepz] is not a known key" in str(e.value)


def test_wrong_type_and_range_say_expected_and_got():
    with pytest.raises(JobError) as e:
        job_from_dict({}, ["sampler.steps=0"])
    msg = str(e.value)
    assert "[sampler -> steps]" in msg and "greater than 0" in msg and "got: 0" in msg
    with pytest.raises(JobError) as e:
        job_from_dict({"generate": {"ipc": "many"}})
    assert "[generate -> ipc]" in str(e.value) and "many" in str(e.value)
    with pytest.raises(JobError) as e:
        job_from_dict({"method": "magic"})
    assert "manifoldgd" in str(e.value)  # lists the choices


def test_cross_field_checks():
    with pytest.raises(JobError, match="d \\(12\\) must be smaller than K"):
        job_from_dict({"guidance": {"d": 12, "K": 12}})
    with pytest.raises(JobError, match="max_actors"):
        job_from_dict({"encode": {"min_actors": 3, "max_actors": 2}})


def test_bad_override_syntax():
    with pytest.raises(JobError, match="dotted.key=value"):
        job_from_dict({}, ["generate.ipc"])
    with pytest.raises(JobError, match="is a value, not a section"):
        job_from_dict({"method": "dit"}, ["method.x=1"])


def test_frozen():
    j = job_from_dict({})
    with pytest.raises(Exception):
        j.generate.ipc = 3


def test_roundtrip_dump(tmp_path):
    j = job_from_dict({}, ["generate.ipc=3"])
    p = tmp_path / "job.yaml"
    from mgd_ray.pipeline.driver import dump_job_redacted
    p.write_text(dump_job_redacted(j))   # what every run stores as config.yaml
    assert load_job(p) == j


def test_safe_load_only(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(p)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml") if not p.name.startswith("prior-")))
def test_shipped_jobs_validate(name):
    assert isinstance(load_job(ROOT / "jobs" / name), JobConfig)


def test_cli_error_is_one_message_no_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"generate": {"ipc": -1}, "colour": "red"}))
    r = subprocess.run([sys.executable, "-m", "mgd_ray.distill", str(p)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert "[generate -> ipc]" in r.stderr and "[colour] is not a known key" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_missing_dataset_dir(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mgd_ray.distill", str(ROOT / "jobs" / "digits.yaml"),
                        "--set", "data.source=fashion-mnist", "--set", f"data.root={tmp_path}/nope"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dataset-fashion-mnist" in r.stderr and "data.root" in r.stderr


def test_cli_unknown_model_offline(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mgd_ray.distill", str(ROOT / "jobs" / "digits.yaml"),
                        "--set", "model.generator=nobody/no-such-model", "--dry-run"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**__import__("os").environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nobody/no-such-model" in r.stderr and "allow_download" in r.stderr


def test_cli_unknown_class_name():
    r = subprocess.run([sys.executable, "-m", "mgd_ray.distill", str(ROOT / "jobs" / "digits.yaml"),
                        "--set", "data.classes=[3, eleven]", "--dry-run"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "eleven" in r.stderr


def test_guidance_that_never_switches_on_is_an_error():
    # t_stop counts sampler steps: with 10 steps, t_stop 25 would silently turn ManifoldGD into plain DiT
    with pytest.raises(JobError) as e:
        job_from_dict({"method": "manifoldgd", "sampler": {"steps": 10}})
    assert "guidance.t_stop (25)" in str(e.value) and "guidance.t_stop=5" in str(e.value)
    assert job_from_dict({"method": "dit", "sampler": {"steps": 10}}).sampler.steps == 10  # no guidance: fine
    assert job_from_dict({"sampler": {"steps": 10}, "guidance": {"t_stop": 5}}).guidance.t_stop == 5


def test_coreset_engine_reaches_the_coreset_builder():
    assert job_from_dict({}).coreset_params.engine == "auto"
    assert job_from_dict({}, ["coreset.engine=numpy"]).coreset_params.engine == "numpy"
    with pytest.raises(JobError) as e:
        job_from_dict({}, ["coreset.engine=cuda"])
    assert "[coreset -> engine]" in str(e.value)


# ---- every schema key does something -----------------------------------------------------------
def _schema_keys(model=None, prefix=()):
    from pydantic import BaseModel

    from mgd_ray.config import JobConfig
    for name, f in (model or JobConfig).model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _schema_keys(f.annotation, prefix + (name,))
        else:
            yield prefix + (name,)


JOB_FACTORIES = {"model_validate", "job_from_dict", "load_job", "absolute_output", "model_copy"}
# the method core's parameter types (mgd_ray/params.py) -> the job section that derives from them:
# a job key of such a section is read where the core reads that field on an object of its type
CORE_TYPES = {"GuidanceParams": "guidance", "CoresetParams": "coreset", "TrainSettings": "evaluate",
              "TrainConfig": "evaluate"}


def _core_section(node) -> str | None:
    """The section of a core type named by an annotation, or built by a call ``T(...)`` /
    ``T.model_validate(...)``; None otherwise."""
    import ast
    if node is None:
        return None
    if isinstance(node, ast.Call):
        fn = node.func
        name = getattr(fn, "id", None) or getattr(getattr(fn, "value", None), "id", None)
        return CORE_TYPES.get(name)
    text = ast.unparse(node)
    return next((s for t, s in CORE_TYPES.items() if t in text.replace("|", " ").split()), None)


def _reads_in(source: str, config_module: bool = False) -> set[tuple[str, str]]:
    """(section, key) of every job-config read in ``source``, resolved on the config types: a
    read counts only when its chain starts at a job — a parameter annotated ``JobConfig``, a name
    bound to ``JobConfig.model_validate(...)`` / ``job_from_dict`` / ``load_job``, ``job`` / ``j``,
    or any ``<x>.job`` — directly (``job.encode.batch_size``) or through a section alias
    (``e = job.encode`` then ``e.batch_size``); ``cfg_get(cfg, "k")`` reads data key k. A same-named
    attribute of anything else (``self.model.device`` on a torch module) does not count. In
    config.py only function bodies count (not the field declarations)."""
    import ast
    tree = ast.parse(source)
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not config_module:
        scopes.append(tree)
    found = set()
    job_methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "JobConfig"
                   for f in c.body if isinstance(f, ast.FunctionDef)}
    # methods of a class derived from a core type: ``self`` is one (``TrainConfig.resolved_augment``)
    core_self = {id(f): _core_section(b) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                 for b in c.bases if _core_section(b) for f in c.body if isinstance(f, ast.FunctionDef)}
    # in config.py, methods of a section's own class (``EvaluateConfig.protocols`` reads ``self.also``)
    if config_module:
        core_self |= {id(f): c.name[:-len("Config")].lower() for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                      and c.name.endswith("Config") and c.name[:-len("Config")].lower() in JobConfig.model_fields
                      for f in c.body if isinstance(f, ast.FunctionDef)}
    # attributes declared with a core type (``self.params: GuidanceParams = ...``), file-wide
    core_attrs = {n.target.attr: _core_section(n.annotation) for n in ast.walk(tree)
                  if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Attribute) and _core_section(n.annotation)}
    for scope in scopes:
        jobs = {"job", "j"} | ({"self"} if id(scope) in job_methods else set())
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jobs |= {a.arg for a in scope.args.args + scope.args.kwonlyargs
                     if a.annotation is not None and "JobConfig" in ast.unparse(a.annotation)}
        for n in ast.walk(scope):
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                    and isinstance(n.value, ast.Call):
                fn = n.value.func
                if (getattr(fn, "attr", None) or getattr(fn, "id", None)) in JOB_FACTORIES \
                        and not _core_section(n.value):
                    jobs.add(n.targets[0].id)

        def is_job(node) -> bool:
            return (isinstance(node, ast.Name) and node.id in jobs) or \
                (isinstance(node, ast.Attribute) and node.attr == "job")

        sections = {n.targets[0].id: n.value.attr for n in ast.walk(scope)
                    if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                    and isinstance(n.value, ast.Attribute) and is_job(n.value.value)}
        # names holding a core parameter object: annotated parameters / assignments of a core type,
        # or bound to a call that builds one
        if id(scope) in core_self:
            sections["self"] = core_self[id(scope)]
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sections |= {a.arg: _core_section(a.annotation) for a in scope.args.args + scope.args.kwonlyargs
                         if _core_section(a.annotation)}
        for n in ast.walk(scope) if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else ():
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and _core_section(n.annotation):
                sections[n.target.id] = _core_section(n.annotation)
            elif isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                    and _core_section(n.value):
                sections[n.targets[0].id] = _core_section(n.value)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr in core_attrs \
                    and isinstance(n.value.value, ast.Name) and n.value.value.id == "self":
                found.add((core_attrs[n.value.attr], n.attr))
        for n in ast.walk(scope):
            if isinstance(n, ast.Attribute) and is_job(n.value):
                found.add(("job", n.attr))
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and is_job(n.value.value):
                found.add((n.value.attr, n.attr))
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in sections:
                found.add((sections[n.value.id], n.attr))
            elif isinstance(n, ast.Call) and getattr(n.func, "id", None) == "cfg_get" and len(n.args) >= 2 \
                    and isinstance(n.args[1], ast.Constant):
                found.add(("data", n.args[1].value))
            elif isinstance(n, ast.Call) and getattr(n.func, "id", None) == "section" and len(n.args) >= 2 \
                    and isinstance(n.args[1], ast.Constant) and len(n.args) == 2:
                found.add((n.args[1].value, "*"))       # a settings key reads every key of the section
    return found


def _package_reads() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "mgd_ray").rglob("*.py"):
        found |= _reads_in(path.read_text(), config_module=path.name == "config.py")
    return found


def test_the_read_scan_resolves_reads_on_the_config_types():
    src = ("def a(m):\n    return m.model.device, m.generate.num_actors\n"
           "def b(job: JobConfig):\n    e = job.encode\n    return job.model.dtype, e.batch_size, job.name\n"
           "def c(jd):\n    j2 = JobConfig.model_validate(jd)\n    return j2.sampler.steps\n")
    assert _reads_in(src) == {("model", "dtype"), ("encode", "batch_size"), ("job", "name"), ("job", "encode"),
                              ("job", "model"), ("sampler", "steps"), ("job", "sampler")}


def test_the_read_scan_follows_the_core_parameter_types():
    """A key the core takes through its parameter type is read where the core reads that field on
    an object of the type; the same attribute of another object does not count."""
    src = ("def f(P: GuidanceParams, q):\n    return P.radius, q.warm\n"
           "def g(Z):\n    P = CoresetParams.model_validate({})\n    return P.split\n"
           "class G:\n    def __init__(self, p):\n        self.params: GuidanceParams = p\n"
           "    def h(self):\n        return self.params.cloud_size, self.other.bandwidth\n")
    assert _reads_in(src) == {("guidance", "radius"), ("coreset", "split"), ("guidance", "cloud_size")}
    # in config.py, a section class's methods read that section through ``self``; field declarations do not count
    src = ("class EvaluateConfig(X):\n    also: list = []\n    def f(self):\n        return self.also\n"
           "class Other(X):\n    def g(self):\n        return self.students\n")
    assert _reads_in(src, config_module=True) == {("evaluate", "also")}


def test_every_schema_key_is_read_somewhere_in_the_package():
    reads = _package_reads()
    assert ("encode", "batch_size") in reads and ("data", "image_column") in reads   # the scan sees both forms
    # a key the settings key reads only as part of its section ("section(job, name)") is not "read":
    # the key must also be used where it acts
    unread = [".".join(k) for k in _schema_keys()
              if not ((len(k) == 1 and ("job", k[0]) in reads) or (len(k) > 1 and k[-2:] in reads))]
    assert not unread, f"job keys that nothing reads (wire them or remove them): {unread}"


def test_guidance_variant_keys_reach_the_guidance():
    job = job_from_dict({}, ["guidance.basis=members", "guidance.beta_schedule=ramp", "guidance.t_project=37",
                             "guidance.d=16", "guidance.K=32", "guidance.radius=0.05", "guidance.radius_mult=3"])
    p = job.guidance_params
    assert (p.basis, p.beta_schedule, p.t_project, p.d, p.K, p.radius, p.radius_mult) == \
        ("members", "ramp", 37, 16, 32, 0.05, 3.0)
    assert job_from_dict({}).guidance_params.t_project is None
    with pytest.raises(JobError, match=r"t_project \(25\) must be above t_stop \(25\)"):
        job_from_dict({}, ["guidance.t_project=25"])
    with pytest.raises(JobError, match="beta_schedule"):
        job_from_dict({}, ["guidance.beta_schedule=sometimes"])


def test_several_evaluation_protocols():
    """``evaluate`` holds the first protocol, ``evaluate.also`` the others; overrides name an entry by
    position or name; each protocol's view is a job with that one protocol and the shared settings."""
    job = job_from_dict({"evaluate": {"protocol": "soft-label", "students": ["convnet6"], "num_workers": 3,
                                      "also": [{"protocol": "hard-label", "students": ["convnet3"]},
                                               {"name": "hard-long", "protocol": "hard-label", "epochs": 9}]}},
                        ["evaluate.also.hard-long.epochs=12", "evaluate.also.0.train_seeds=1",
                         "evaluate.also.hard-label.n_evals=4"])
    views = job.evaluations()
    assert [n for n, _ in views] == ["soft-label", "hard-label", "hard-long"]
    soft, hard, long_ = (v.evaluate for _, v in views)
    assert (soft.protocol, soft.students, soft.also) == ("soft-label", ["convnet6"], [])
    assert (hard.protocol, hard.students, hard.train_seeds, hard.n_evals) == ("hard-label", ["convnet3"], 1, 4)
    assert (long_.label, long_.epochs, long_.students) == ("hard-long", 12, ["convnet3"])   # its own defaults
    assert {v.evaluate.num_workers for _, v in views} == {3}                               # shared
    assert all(v.generate == job.generate for _, v in views)
    # a view round-trips as the job its workers rebuild
    assert JobConfig.model_validate(views[2][1].model_dump(mode="json")).evaluate == long_
    # two protocols of one name would share eval/<name>/: refused, saying how to fix it
    with pytest.raises(JobError, match=r"more than once.*evaluate.also.0.name"):
        job_from_dict({"evaluate": {"also": [{"protocol": "hard-label"}]}})
    with pytest.raises(JobError, match=r"also -> 0 -> name"):
        job_from_dict({"evaluate": {"also": [{"name": "../x"}]}})
    # an override into a list must name an entry; a name no entry has is refused with the names there are
    with pytest.raises(JobError, match="is a list; name one of its entries"):
        job_from_dict({"evaluate": {"also": [{"protocol": "soft-label"}]}}, ["evaluate.also=[]", "evaluate.also.x=1"])
    with pytest.raises(JobError, match=r"names no single entry.*\['soft-label'\]"):
        job_from_dict({"evaluate": {"also": [{"protocol": "soft-label"}]}}, ["evaluate.also.hard-label.epochs=1"])
    # each protocol's teacher is checked where it is written
    with pytest.raises(JobError, match=r"evaluate.also.0.protocol soft-label-imagenet needs evaluate.also.0.teacher"):
        job_from_dict({"evaluate": {"also": [{"protocol": "soft-label-imagenet"}]}})
