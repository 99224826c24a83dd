"""Typed job files.

A job file is YAML; this module is its schema. The tree mirrors the pipeline's stages
(data -> encode -> coreset -> guidance/sampler -> generate -> evaluate), every model is
``extra="forbid"`` and frozen, and errors name the key path, what was expected and what
was given::

    [sampler -> steps] must be greater than 0 (got: 0)

``load_job(path, overrides)`` applies ``--set dotted.key=value`` overrides (values parsed as
YAML scalars with ``yaml.safe_load``) before validation, so an override error reads exactly
like a file error. The resolved config stored beside every output (``config.yaml``, credentials
redacted) is written by ``pipeline.driver.dump_job_redacted`` and loads back to the same job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .methods import METHODS, Method
from .params import CoresetParams, GuidanceParams, TrainSettings


class JobError(ValueError):
    """A job file or override is invalid. The message says where, what and how to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Model):
    source: Literal["sklearn-digits", "fashion-mnist", "imagefolder", "parquet"] = "sklearn-digits"
    root: str | None = None
    download: bool = False
    classes: list[str] | str | None = None
    class_list: str | None = None
    limit_per_class: int | None = Field(default=None, gt=0)
    test_limit_per_class: int | None = Field(default=None, gt=0)
    image_column: str = "image"
    label_column: str = "label"
    max_failures: int = Field(default=100, ge=0)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class EncodeConfig(_Model):
    image_size: int | None = Field(default=None, gt=0, description="generator resolution; None = the VAE's")
    preprocess: Literal["pad", "center-crop", "none"] = "pad"
    batch_size: int = Field(default=256, gt=0)
    min_actors: int = Field(default=1, ge=1)
    max_actors: int = Field(default=2, ge=1)
    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _pool(self):
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= min_actors ({self.min_actors})")
        return self


class ModelConfig(_Model):
    generator: str = Field(default="prior:digits", description="prior:<name>, a local dir, or a hub id")
    vae: str | None = Field(default=None, description="None = the generator's vae/ subfolder")
    allow_download: bool = False
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class CoresetConfig(CoresetParams):
    """``coreset:``: the core's ``CoresetParams`` (names, defaults and checks from there) plus the
    method's default kind (``auto``) and the Ray side of the stage."""
    method: Literal["auto", "divisive", "kmeans", "random", "herding", "kcenter"] = Field(
        default="auto", description="auto = the method's own coreset (mgd_ray/methods.py)")
    neighbourhood_max: int = Field(default=256, ge=1, description="real latents kept per target for the tangent basis")
    latents_per_task: int = Field(default=20000, ge=1, description="coreset fan-out: one Ray task per this many "
                                  "latents (whole classes, >= 1 class per task); not the cluster's CPUs")
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs each coreset task asks for (its BLAS threads)")


class GuidanceConfig(GuidanceParams):
    """``guidance:``: the core's ``GuidanceParams`` (names, defaults and checks from there), with
    ``manifold_scale`` left to the method unless set."""
    manifold_scale: float | None = Field(default=None, ge=0, description="None = by method (0 for mgd3)")


class SamplerConfig(_Model):
    kind: Literal["ddpm", "ddim"] = "ddpm"
    steps: int = Field(default=50, gt=0, le=1000)
    cfg_scale: float = Field(default=4.0, ge=1.0)
    cfg_channels: Literal["all", "first3"] = "all"
    variance_type: Literal["auto", "learned_range", "fixed_small", "fixed_large"] = "auto"
    eta: float = Field(default=0.0, ge=0, le=1)


class GenerateConfig(_Model):
    ipc: int = Field(default=10, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    targets_per_unit: int = Field(default=10, gt=0)
    batch_size: int = Field(default=16, gt=0)
    num_actors: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_retries: int = Field(default=3, ge=0)
    start_timeout_s: float = Field(default=900.0, gt=0, description="placement: how long to wait for a first "
                                   "generator actor to start (node launch + model load) before failing")
    fault_inject: str | None = Field(default=None, description="testing only: kills a generator actor once "
                                        "per output.dir; 'unit=<name>' in that unit, ':after_commits=<n>' only once "
                                        "that actor committed n shards, ':at=commit' mid-unit (images made, shard not "
                                        "committed); see pipeline/generator.py parse_fault")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"lists seed(s) {dup} more than once; each seed names one distilled set and its "
                             f"shards (s<seed>-...), so a repeated seed would write the same shards twice. List "
                             f"each seed once, e.g. {sorted(set(seeds))}")
        return seeds


PROTOCOL_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class ProtocolConfig(TrainSettings):
    """One evaluation protocol: the students' ``TrainSettings`` (names, defaults and checks from
    there) plus which trials it runs. Each protocol trains its own students and its own random-real
    baseline from the job's shards, keeps its trials under ``eval/<name>/`` and has its own key."""
    name: str | None = Field(default=None, pattern=PROTOCOL_NAME, description="what results, report and status "
                             "call this protocol, and its directory eval/<name>/; None = the protocol's own name. "
                             "Set it to run one protocol twice with different settings")
    teacher: str | None = Field(default=None, description="soft-label: local directory of a network trained on "
                                "the real data (mgd_ray/eval/soft_label.py); None = the prior's classifier/. "
                                "soft-label-imagenet: a hub id, hub:ORG/NAME[@REV] (hub:timm/resnet18.tv_in1k: "
                                "torchvision's ImageNet ResNet-18), read from the local hub cache that `mgd-ray "
                                "models fetch JOB.yaml` fills (mgd_ray/eval/soft_label_imagenet.py)")
    students: list[str] = Field(default_factory=lambda: ["convnet3"], min_length=1)
    train_seeds: int = Field(default=3, ge=1)
    image_size: int | None = Field(default=None, gt=0, description="student input size (224 for the ImageNet "
                                   "family: resize + centre crop); None = native size")
    baselines: list[Literal["random-real"]] = Field(default_factory=lambda: ["random-real"])

    @property
    def label(self) -> str:
        """The protocol's name in results, report, status and ``eval/<name>/``."""
        return self.name or self.protocol


PROTOCOL_FIELDS = tuple(ProtocolConfig.model_fields)


class EvaluateConfig(ProtocolConfig):
    """``evaluate:``: the first protocol's settings (``ProtocolConfig``) at the top, further
    protocols under ``also`` (each evaluated from the same shards, in order), and what they share:
    whether to evaluate, the Ray Train side and the distribution metrics."""
    enabled: bool = True
    also: list[ProtocolConfig] = Field(default_factory=list, description="further protocols after the one above, "
                                       "e.g. the paper's hard-label protocol after the soft-label one; each trains "
                                       "its own students and random-real baseline from the same shards")
    num_workers: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=0.5, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    metrics: bool = True
    classifier: str | None = Field(default=None, description="real-data classifier for FID features; None = the prior's")
    features: Literal["auto", "inception", "classifier"] = Field(
        default="auto", description="feature space of the distribution metrics: inception = the standard "
        "Inception-v3 FID network (torch-fidelity; weights fetched by `mgd-ray models fetch JOB.yaml`), classifier "
        "= the real-data classifier (evaluate.classifier, else the prior's classifier/), auto = inception for the "
        "ImageNet family (data.class_list imagenet1k, imagenet100, imagenette, imagewoof or a file of ImageNet-1K "
        "wnids), else classifier (mgd_ray/inception.py)")

    @model_validator(mode="after")
    def _names_distinct(self):
        names = [p.label for p in self.protocols]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"runs protocol name(s) {dup} more than once ({names}): each protocol keeps its trials under "
                f"eval/<name>/, so two of one name would share them. Give one a name of its own (e.g. "
                f"--set evaluate.also.0.name={dup[0]}-2), or drop the repeat (--set evaluate.also=[])")
        return self

    @property
    def first(self) -> ProtocolConfig:
        """The protocol written at the top of the section."""
        return ProtocolConfig.model_validate({k: getattr(self, k) for k in PROTOCOL_FIELDS})

    @property
    def protocols(self) -> list[ProtocolConfig]:
        """Every protocol of the job, in order: the top one, then ``also``."""
        return [self.first, *self.also]

    def only(self, p: ProtocolConfig) -> "EvaluateConfig":
        """This section with ``p`` as its one protocol (what a protocol's trials read)."""
        shared = {k: getattr(self, k) for k in type(self).model_fields if k not in PROTOCOL_FIELDS and k != "also"}
        return EvaluateConfig.model_validate({**shared, **p.model_dump(), "also": []})


class RayConfig(_Model):
    address: str | None = Field(default=None, description="None = attach if RAY_ADDRESS is set, else start locally")
    num_cpus: int | None = Field(default=None, gt=0)
    object_store_memory: int | None = Field(default=None, gt=0)
    include_dashboard: bool = False


class OutputConfig(_Model):
    dir: str = "out/job"
    lease_epoch: int | None = Field(default=None, ge=1, description="set by the driver for its workers: the "
                                    "epoch of the lease it holds on dir (their commits check it); never set it "
                                    "in a job file")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    preview: bool = True

    @field_validator("dir")
    @classmethod
    def _dir_given(cls, d: str) -> str:
        if not d.strip():
            raise ValueError("is empty: the job would write into the current directory. Name a directory of its "
                             "own, e.g. --set output.dir=out/myjob, or s3://bucket/prefix")
        if d != d.strip():
            raise ValueError(f"has leading or trailing spaces ({d!r}); write the path without them")
        return d


class JobConfig(_Model):
    name: str = "job"
    method: str = Field(default="manifoldgd", description="one of mgd_ray/methods.py METHODS")
    data: DataConfig = Field(default_factory=DataConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    coreset: CoresetConfig = Field(default_factory=CoresetConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("method")
    @classmethod
    def _method_known(cls, m: str) -> str:
        if m not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}")
        return m

    @model_validator(mode="after")
    def _teacher_known(self):
        for i, p in enumerate(self.evaluate.protocols):
            self._check_teacher(p, "evaluate" if i == 0 else f"evaluate.also.{i - 1}")
        return self

    def _check_teacher(self, ev: ProtocolConfig, where: str):
        enabled = self.evaluate.enabled
        if ev.protocol == "soft-label-imagenet" or (ev.teacher or "").startswith("hub:"):
            from .teachers import DEFAULT_TEACHER, parse_teacher
            if ev.protocol == "soft-label":
                raise ValueError(f"{where}.teacher {ev.teacher!r} is a hub id: only protocol "
                                 f"soft-label-imagenet reads one (soft-label takes a local directory)")
            if ev.protocol in ("hard-label", "hard-label-imagenet"):
                return                           # the teacher is not read (e.g. the CPU twin of imagenet1k.yaml)
            if enabled and ev.teacher is None:
                raise ValueError(f"{where}.protocol soft-label-imagenet needs {where}.teacher: the hub id of "
                                 f"torchvision's ImageNet ResNet-18, {DEFAULT_TEACHER} (fetch it first with "
                                 f"`mgd-ray models fetch JOB.yaml`)")
            if ev.teacher is not None:
                parse_teacher(ev.teacher)        # ValueError naming the form
            return
        if enabled and ev.protocol == "soft-label" and ev.teacher is None \
                and not self.model.generator.startswith("prior:"):
            raise ValueError(
                f"{where}.protocol soft-label needs {where}.teacher: a local directory holding a network trained "
                f"on the real data (e.g. a ResNet-18: teacher.json + teacher.safetensors, see "
                f"mgd_ray/eval/soft_label.py); only the shipped priors (model.generator prior:<name>) bring one "
                f"(their classifier/), and {self.model.generator!r} is not one of them")

    def evaluations(self) -> list[tuple[str, "JobConfig"]]:
        """(protocol name, this job with that protocol as its only one) per evaluation protocol, in
        order: the per-protocol code (trials, teacher, test split, summary, bill) reads ``job.evaluate``
        as one protocol."""
        return [(p.label, self.model_copy(update={"evaluate": self.evaluate.only(p)}))
                for p in self.evaluate.protocols]

    @model_validator(mode="after")
    def _guidance_reachable(self):
        steps = self.sampler.steps
        if self.spec.guides and self.guidance.t_stop >= steps - 1:
            raise ValueError(
                f"guidance.t_stop ({self.guidance.t_stop}) is counted in sampler steps and must be below "
                f"sampler.steps - 1 ({steps - 1}), or {self.method} guidance is never applied; "
                f"with {steps} steps use e.g. guidance.t_stop={max(-1, min(steps // 2, steps - 2))}")
        return self

    # ---- resolved choices (the method decides what "auto" means) --------------------
    @property
    def spec(self) -> Method:
        """The method's entry in the registry (``mgd_ray/methods.py``)."""
        return METHODS[self.method]

    @property
    def generative(self) -> bool:
        return self.spec.generates

    @property
    def coreset_method(self) -> str | None:
        if self.coreset.method != "auto":
            return self.coreset.method
        return self.spec.coreset

    @property
    def manifold_scale(self) -> float:
        if self.guidance.manifold_scale is not None:
            return self.guidance.manifold_scale
        return self.spec.manifold_scale

    @property
    def lam_mode(self) -> float:
        return self.guidance.lam_mode if self.spec.guides else 0.0

    @property
    def coreset_params(self) -> CoresetParams | None:
        """The core's coreset parameters with the kind resolved (None: the method has no coreset)."""
        kind = self.coreset_method
        if kind is None:
            return None
        return CoresetParams.build(self.coreset, method=kind)

    @property
    def guidance_params(self) -> GuidanceParams:
        """The core's guidance parameters with the method's choices resolved (its manifold scale,
        and no mode term for a method that does not guide)."""
        return GuidanceParams.build(self.guidance, lam_mode=self.lam_mode, manifold_scale=self.manifold_scale)


# ---------------------------------------------------------------------------------------
def _fmt_loc(loc) -> str:
    return " -> ".join(str(p) for p in loc) if loc else "(top level)"


def format_validation_error(err: ValidationError, origin: str = "job") -> str:
    lines = [f"invalid {origin}:"]
    for e in err.errors():
        loc = _fmt_loc(e.get("loc", ()))
        kind = e.get("type", "")
        given = e.get("input")
        if kind == "extra_forbidden":
            lines.append(f"  [{loc}] is not a known key (remove it or check its spelling; see README 'Job files')")
            continue
        msg = e.get("msg", "").removeprefix("Value error, ")
        shown = json.dumps(given, default=str) if not isinstance(given, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  [{loc}] {msg} (got: {shown})")
    return "\n".join(lines)


MAX_JOB_FILE_BYTES = 1 << 20      # job files are a few KB; an ImageNet class list inline is ~20 KB
MAX_YAML_VALUES = 100_000         # values (scalars, lists, mappings) a document may expand to through aliases


def _yaml_children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []


def _check_expansion(root, origin: str, limit: int = MAX_YAML_VALUES) -> int:
    """The number of values the composed node graph ``root`` expands to once every alias is
    replaced by a copy of its anchored value (what the overrides' deep copy, and pydantic, walk).
    Counted on the graph, before any Python object exists: shared nodes are counted once per use
    from memoised sizes, so a billion-laughs document is refused after a few thousand steps.
    Raises JobError for an expansion over ``limit`` and for an anchored value that contains an alias
    to itself (``a: &a [*a]``), which no job can hold."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_.discard(key)
            size[key] = n = 1 + sum(size[id(c)] for c in _yaml_children(node))
            if n > limit:
                raise JobError(
                    f"{origin}: its aliases (*name) would expand it to more than {limit:,} values (the value "
                    f"anchored at line {node.start_mark.line + 1} alone expands to {n:,}), a YAML alias bomb. "
                    f"A job needs a few hundred values: write the values out, or share settings with "
                    f"'extends: other.yaml' instead of nested aliases")
            continue
        if key in size:
            continue
        if key in open_:
            raise JobError(
                f"{origin}: the value anchored at line {node.start_mark.line + 1} contains an alias to itself "
                f"(like 'a: &a [*a]'), an endless value no job can hold; remove that alias")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _yaml_children(node))
    return size[id(root)]


def safe_load_bounded(text: str, origin: str) -> Any:
    """``yaml.safe_load`` (the SafeLoader: plain data only) with the expansion through aliases
    bounded and self-containing aliases refused before any value is built (``_check_expansion``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, origin)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise JobError(f"{origin} is not valid YAML: {e}") from None
    except RecursionError:
        raise JobError(f"{origin} nests sections too deeply to read; a job is a few levels deep "
                       f"(section -> key -> value)") from None
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a","b","c"], yaml scalar). Raises JobError when malformed."""
    if "=" not in item:
        raise JobError(f"override {item!r} must look like dotted.key=value, e.g. generate.ipc=10")
    key, _, raw = item.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise JobError(f"override {item!r}: empty key segment in {key!r}")
    value = safe_load_bounded(raw, f"override {item!r}") if raw.strip() != "" else ""
    return path, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    try:   # deep copy, plain types (a YAML date or !!binary becomes its text; pydantic judges it)
        raw = json.loads(json.dumps(raw, default=str))
    except ValueError as e:   # a self-containing value built in Python (files are checked at read time)
        raise JobError(f"the job holds a value that contains itself ({e}); remove that reference") from None
    for item in overrides or []:
        path, value = parse_override(item)
        node = raw
        for i, p in enumerate(path[:-1]):
            nxt = _list_entry(node, p, item, path[:i + 1]) if isinstance(node, list) else node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, (dict, list)):
                raise JobError(f"override {item!r}: [{' -> '.join(path[:i + 1])}] is a value, not a section")
            node = nxt
        if isinstance(node, list):
            raise JobError(f"override {item!r}: [{' -> '.join(path[:-1])}] is a list; name one of its entries "
                           f"(by position or name) before the key, e.g. evaluate.also.0.epochs=10")
        node[path[-1]] = value
    return raw


def _list_entry(entries: list, p: str, item: str, where: list[str]) -> dict:
    """The entry of a list of sections (``evaluate.also``) an override names: by position (``0``)
    or by its ``name``, else its ``protocol`` (``evaluate.also.hard-label.epochs=10``)."""
    if p.isdigit() and int(p) < len(entries):
        return entries[int(p)]
    named = [e for e in entries if isinstance(e, dict) and (e.get("name") or e.get("protocol")) == p]
    if len(named) == 1:
        return named[0]
    names = [(e.get("name") or e.get("protocol")) if isinstance(e, dict) else None for e in entries]
    raise JobError(f"override {item!r}: [{' -> '.join(where)}] names no single entry of a list of {len(entries)} "
                   f"({names}); use a position 0..{len(entries) - 1} or one of those names")


def job_from_dict(raw: dict, overrides: list[str] | None = None, origin: str = "job") -> JobConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobError(f"invalid {origin}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as e:
        raise JobError(format_validation_error(e, origin)) from None


def merge_sections(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: sections merge key by key, any other value replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_sections(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_job_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A job file as a plain dict, with ``extends: other.yaml`` resolved (relative to this file):
    the other file's settings, then this file's on top. A twin job thus names only what it changes."""
    p = Path(path)
    if not p.is_file():
        raise JobError(f"job file {str(p)!r} not found (expected a YAML file, e.g. jobs/digits.yaml)")
    size = p.stat().st_size
    if size > MAX_JOB_FILE_BYTES:
        raise JobError(f"job file {str(p)!r} is {size:,} bytes; a job file is a few KB (at most "
                       f"{MAX_JOB_FILE_BYTES:,} bytes are read). Is this the right file? Put long class lists in "
                       f"a class-list file (data.class_list)")
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise JobError(f"job file {str(p)!r} is not UTF-8 text ({e}); a job file is YAML text") from None
    raw = safe_load_bounded(text, f"job file {str(p)!r}")
    if raw is None or raw == {}:
        raise JobError(f"job file {str(p)!r} is empty (or holds only comments): there is no job in it, and the "
                       f"built-in defaults are not run in its place. Write the job's sections (data, model, "
                       f"generate, output, ...), e.g. start from a copy of jobs/digits.yaml")
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise JobError(f"job file {str(p)!r}: [extends] must be the path of another job file (got: {parent!r})")
    base_path = (p.parent / parent).resolve()
    if base_path in _seen:
        raise JobError(f"job file {str(p)!r}: [extends] loops back to {str(base_path)!r}")
    base = read_job_file(base_path, _seen + (p.resolve(),))
    if not isinstance(base, dict):
        raise JobError(f"job file {str(base_path)!r} (extended by {str(p)!r}) must be a mapping of sections")
    return merge_sections(base, raw)


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job file (safe_load only; ``extends`` resolved), apply overrides, validate."""
    return job_from_dict(read_job_file(path), overrides, origin=f"job file {Path(path)}")
