"""Run configuration (YAML) as frozen, validated dataclasses. No environment lookups here.

Every error names the file's field (``ConfigError``): a broken config fails loudly wherever it
is loaded (CLI, UI code location, daemon), never silently falls back to defaults.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from . import dsir as _dsir
from . import perplexity as _ppl
from .proxy_lm import PROXY_PRESETS
from .regression import MODEL_NAMES as REGRESSORS
from .signals import SIGNAL_NAMES

#: Rater groups computed by the project and the scores each provides; ``precomputed`` reads the
#: scores named in ``precomputed.scores`` from the shards themselves.
RATERS: dict[str, tuple[str, ...]] = {
    "rpv2": SIGNAL_NAMES,
    "dsir": ("dsir_books", "dsir_wiki", "dsir_math"),
    "perplexity": (_ppl.SCORE,),
    "precomputed": (),
}
#: per-score direction: "high" (higher is better, the paper's default for every score), "low"
#: (lower is better: the score is flipped in the normalisation, so a positive weight favours low values)
#: or "auto" (decided before the proxy swarm by two single-score runs, its top and its bottom)
ORIENTATIONS = ("high", "low", "auto")


class ConfigError(ValueError):
    """A configuration that cannot run, with the field that is wrong."""


def _resolve(base: str, uri: str) -> str:
    if "://" in uri or os.path.isabs(uri):
        return uri
    return os.path.normpath(os.path.join(base, uri))


def _fraction(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1], got {v!r}") from None
    if not (0.0 < f <= 1.0):
        raise ConfigError(f"{name} must be in (0, 1], got {v!r}")
    return f


def _int(name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}") from None
    if i < lo or i != v and not isinstance(v, str):
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    return i


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _bytes(name: str, v: Any) -> int:
    """A size in bytes: an integer, or a string such as ``16MB`` / ``64 MiB``."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", v)
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"{name} must be a size such as 16MB or 67108864, got {v!r}")
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    return _int(name, v, 0)


#: what a validation set stands for (``validation.sets.NAME.role``)
VALIDATION_ROLES = ("quality", "in_distribution")


def _known(section: str, raw: Mapping, keys: set[str]) -> None:
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; known: {sorted(keys)}")


@dataclass(frozen=True)
class DsirConfig:
    buckets: int = _dsir.DEFAULT_BUCKETS
    targets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PerplexityConfig:
    """The ``perplexity`` rater: a bigram model of clean reference text (``targets``: files of
    documents, read whole; default: the DSIR targets)."""

    targets: tuple[str, ...] = ()
    buckets: int = _ppl.DEFAULT_BUCKETS
    discount: float = _ppl.DEFAULT_DISCOUNT


@dataclass(frozen=True)
class ProxiesConfig:
    """Tier 1 (the regressor's data): ``n`` Dirichlet vectors (+ one per score) of one proxy kind."""

    n: int = 16
    seed: int = 0
    fraction: float = 0.15
    fraction_of: str = "tokens"
    kind: str = "transformer"
    preset: str = "tiny"
    token_budget: int | None = None
    single_score_runs: bool = True


@dataclass(frozen=True)
class ConfirmConfig:
    """Tier 2: transformer proxies on a subset of tier 1's vectors (the predicted optimum, the
    single-score vectors, ``spread`` vectors across tier 1's loss range) to confirm its ranking."""

    kind: str = "transformer"
    preset: str = "tiny"
    token_budget: int | None = None
    spread: int = 6
    #: true: every single-score vector; N: the N with the lowest tier-1 loss; false: none
    single_score_runs: bool | int = True
    optimum: bool = True


@dataclass(frozen=True)
class PrrcConfig:
    """Meta-rater's own raters: PRRC labels (a file, or an LLM endpoint annotating a sample of the
    pool) and the rater trained on them, which then serves these ``dims`` of model scores."""

    dims: tuple[str, ...]
    labels: str | None = None
    annotate: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    #: one encoder for all dimensions (cheaper) instead of one per dimension (the paper's layout)
    shared_encoder: bool = False
    #: "finetune" (the encoder trained end to end) or "probe" (frozen encoder embeddings + cheap
    #: text features, logistic regression per dimension)
    method: str = "finetune"


@dataclass(frozen=True)
class Config:
    raters: tuple[str, ...]
    dsir: DsirConfig
    validation_sets: Mapping[str, str]
    #: per set: "quality" (text that is not the pool: what a selection should be good at),
    #: "in_distribution" (the pool's own text) or None (undeclared)
    validation_roles: Mapping[str, str | None]
    validation_max_docs: int
    #: "mean" (of every set), one set's name, or "a+b" (the mean of the quality sets, which
    #: ``target: mean`` becomes when any set is declared ``role: quality``)
    validation_target: str
    tokenizer_vocab_size: int
    tokenizer_path: str | None
    tokenizer_sample_docs: int
    proxies: ProxiesConfig
    regressor: Mapping[str, Any]
    curation: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    compute: Mapping[str, Any]
    source: str = ""
    model_registry: str | None = None
    model_scores: tuple[str, ...] = ()
    prrc: PrrcConfig | None = None
    registry: Mapping[str, Any] = field(default_factory=dict)  # score -> RaterSpec (parsed once)
    precomputed: tuple = ()  # precomputed.ScoreSource per score read from the shards
    validation_held_out: float = 0.5
    orientation: Mapping[str, str] = field(default_factory=dict)  # score -> high / low
    confirm: ConfirmConfig | None = None
    stats_sample_docs: int = 5000
    #: new files smaller than this many bytes are packed into partitions of at least this size
    #: (0: one partition per file, the default); a pack holds at most ``pack_max_files`` files
    pack_bytes: int = 0
    pack_max_files: int = 1000
    #: shard keys (glob patterns) taken out of the pool: a shard that failed stops everything
    #: downstream of it until it is fixed or named here
    exclude: tuple[str, ...] = ()
    #: where rows keep their text, id and meta (``ingest.text_field`` / ``id_field`` / ``meta_fields``)
    fields: Any = None
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)

    @property
    def trained_scores(self) -> tuple[str, ...]:
        """Model scores served by the PRRC rater this project trains (not the registry's model)."""
        return tuple(n for n in self.model_scores if self.prrc and n in self.prrc.dims)

    @property
    def precomputed_scores(self) -> tuple[str, ...]:
        return tuple(s.score for s in self.precomputed)

    @property
    def score_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for r in self.raters:
            names.extend(self.precomputed_scores if r == "precomputed" else RATERS[r])
        return tuple(names) + tuple(self.model_scores)

    def rater_specs(self) -> dict:
        """RaterSpec of every active model score served by a registry model."""
        return {n: self.registry[n] for n in self.model_scores if n not in self.trained_scores}

    def orientation_of(self, name: str) -> str:
        """A score's direction: as ``scores.orientation`` names it, else its ``default`` there, else
        the score's known direction (``low`` for the RPv2 signals in ``signals.LOWER_IS_BETTER`` and
        for the perplexity),
        else ``high``."""
        if name in self.orientation:
            return self.orientation[name]
        if "default" in self.orientation:
            return self.orientation["default"]
        from .signals import LOWER_IS_BETTER

        return "low" if name in LOWER_IS_BETTER or name == _ppl.SCORE else "high"

    @property
    def orientations(self) -> dict[str, str]:
        """The direction of every active score (what the normalisation flips)."""
        return {n: self.orientation_of(n) for n in self.score_names}

    @property
    def auto_oriented(self) -> tuple[str, ...]:
        """The scores whose direction single-score proxy runs decide (``orientation: auto``)."""
        return tuple(n for n in self.score_names if self.orientation_of(n) == "auto")


def load_config(path: str) -> Config:
    from .storage import fs_and_path

    fs, p = fs_and_path(path)
    if not fs.exists(p):
        raise ConfigError(f"config file {path!r} does not exist")
    with fs.open(p, "r") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path!r}: expected a mapping at the top level")
    base = os.path.dirname(os.path.abspath(path)) if "://" not in path else path.rsplit("/", 1)[0]
    try:
        return parse_config(raw, base, source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _registry(path: str) -> dict:
    from .raters import parse_registry
    from .storage import fs_and_path

    fs, rp = fs_and_path(path)
    if not fs.exists(rp):
        raise ConfigError(f"model_raters.registry {path!r} does not exist")
    with fs.open(rp, "r") as f:
        try:
            return parse_registry(yaml.safe_load(f) or {})
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"model_raters.registry {path!r}: {e}") from None


def parse_config(raw: Mapping[str, Any], base: str = ".", source: str = "") -> Config:
    _known("config", raw, {"raters", "dsir", "perplexity", "validation", "tokenizer", "proxies", "confirm", "regressor",
                           "curation", "evaluation", "compute", "model_raters", "prrc", "precomputed",
                           "scores", "stats", "ingest", "raw"})
    raters = tuple(raw.get("raters", ["rpv2", "dsir"]))
    unknown = [r for r in raters if r not in RATERS]
    if unknown:
        raise ConfigError(f"unknown rater(s) {unknown}; known raters: {sorted(RATERS)}")
    if not raters:
        raise ConfigError("raters: at least one rater must be active")
    d = raw.get("dsir", {}) or {}
    targets = {k: _resolve(base, v) for k, v in (d.get("targets") or {}).items()}
    if "dsir" in raters:
        want = {n.removeprefix("dsir_") for n in RATERS["dsir"]}
        if set(targets) != want:
            raise ConfigError(f"dsir.targets must name exactly {sorted(want)}, got {sorted(targets)}")
        targets = {n.removeprefix("dsir_"): targets[n.removeprefix("dsir_")] for n in RATERS["dsir"]}
    v = raw.get("validation", {}) or {}
    _known("validation", v, {"sets", "max_docs", "target", "held_out"})
    sets, roles = {}, {}
    for k, u in (v.get("sets") or {}).items():
        if "+" in str(k) or str(k) == "mean":
            raise ConfigError(f"validation.sets: {k!r} cannot name a set ('mean' and '+' are taken by validation.target)")
        if isinstance(u, Mapping):
            _known(f"validation.sets.{k}", u, {"uri", "role"})
            if "uri" not in u:
                raise ConfigError(f"validation.sets.{k}: needs uri")
            role = u.get("role")
            if role is not None and role not in VALIDATION_ROLES:
                raise ConfigError(f"validation.sets.{k}.role must be one of {list(VALIDATION_ROLES)}, got {role!r}")
            sets[k], roles[k] = _resolve(base, u["uri"]), role
        else:
            sets[k], roles[k] = _resolve(base, u), None
    if not sets:
        raise ConfigError("validation.sets: at least one validation set is needed")
    target = str(v.get("target", "mean"))
    if target != "mean" and target not in sets:
        raise ConfigError(f"validation.target must be 'mean' or one of {sorted(sets)}, got {target!r}")
    quality = [k for k in sets if roles[k] == "quality"]
    if target == "mean" and quality:  # the quality targets decide when there are any
        target = "+".join(quality)
    # half of each validation set is held out for the evaluation by default: proxies and the
    # regressor never see it (0 makes the evaluation read the tuning documents, with a warning)
    held_out = float(v.get("held_out", 0.5))
    if not 0.0 <= held_out < 1.0:
        raise ConfigError(f"validation.held_out must be in [0, 1), got {held_out!r}")
    from .storage import exists as _exists

    pp = raw.get("perplexity", {}) or {}
    _known("perplexity", pp, {"targets", "buckets", "discount"})
    pp_targets = pp.get("targets")
    if isinstance(pp_targets, Mapping):
        pp_targets = list(pp_targets.values())
    elif isinstance(pp_targets, str):
        pp_targets = [pp_targets]
    pp_targets = tuple(_resolve(base, u) for u in (pp_targets or ()))
    if not pp_targets:
        pp_targets = tuple(targets.values())  # the DSIR targets: clean reference text already named
        if "perplexity" in raters and not pp_targets:
            raise ConfigError("perplexity.targets: name the clean reference text the perplexity rater's model "
                              "is trained on (files of documents), or configure dsir.targets")
    try:
        perplexity_ = PerplexityConfig(targets=pp_targets, buckets=_int("perplexity.buckets", pp.get(
            "buckets", _ppl.DEFAULT_BUCKETS), 1000), discount=float(pp.get("discount", _ppl.DEFAULT_DISCOUNT)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"perplexity: {e}") from None
    if not 0.0 < perplexity_.discount < 1.0:
        raise ConfigError(f"perplexity.discount must be in (0, 1), got {perplexity_.discount!r}")
    for field_name, uris in (("dsir.targets", targets), ("validation.sets", sets),
                             ("perplexity.targets", dict(enumerate(pp_targets)))):
        for k, u in uris.items():
            if not _exists(u):
                raise ConfigError(f"{field_name}.{k}: {u!r} does not exist")
    p = dict(raw.get("proxies", {}) or {})
    try:
        proxies = ProxiesConfig(**p)
    except TypeError as e:
        raise ConfigError(f"proxies: {e}") from None
    if proxies.n < 1:
        raise ConfigError(f"proxies.n must be >= 1 (got {proxies.n}): the regressor needs proxy runs")
    _fraction("proxies.fraction", proxies.fraction)
    _check_kind("proxies", proxies.kind, proxies.preset)
    if proxies.fraction_of not in ("tokens", "docs"):
        raise ConfigError("proxies.fraction_of must be 'tokens' or 'docs'")
    confirm = None
    if raw.get("confirm"):
        try:
            confirm = ConfirmConfig(**dict(raw["confirm"]))
        except TypeError as e:
            raise ConfigError(f"confirm: {e}") from None
        _check_kind("confirm", confirm.kind, confirm.preset)
        ssr = confirm.single_score_runs
        if not isinstance(ssr, (bool, int)) or (not isinstance(ssr, bool) and ssr < 1):
            raise ConfigError(f"confirm.single_score_runs must be true, false or a number >= 1 (the "
                              f"single-score vectors with the lowest tier-1 loss), got {ssr!r}")
    cur = dict(raw.get("curation", {}) or {})
    _known("curation", cur, {"fraction", "fraction_of", "token_budget", "format", "weights_file", "output_uri",
                             "weights"})
    cur.setdefault("weights", "optimal")
    if cur["weights"] not in ("optimal", "best_confirmed"):
        raise ConfigError(f"curation.weights must be 'optimal' (the regressor's predicted optimum) or "
                          f"'best_confirmed' (the tier-2 run with the lowest tuning loss), got {cur['weights']!r}")
    if cur["weights"] == "best_confirmed" and not confirm:
        raise ConfigError("curation.weights: best_confirmed needs tier 2 (a confirm: section)")
    cur["fraction"] = _fraction("curation.fraction", cur.get("fraction", 0.15))
    cur.setdefault("fraction_of", "tokens")
    if cur["fraction_of"] not in ("tokens", "docs"):
        raise ConfigError("curation.fraction_of must be 'tokens' or 'docs'")
    if cur.get("token_budget") is not None:
        cur["token_budget"] = _int("curation.token_budget", cur["token_budget"], 1)
    cur.setdefault("format", "parquet")
    if cur["format"] not in ("parquet", "jsonl.zst"):
        raise ConfigError("curation.format must be 'parquet' or 'jsonl.zst'")
    if cur.get("weights_file"):
        cur["weights_file"] = _resolve(base, cur["weights_file"])
    if cur.get("output_uri"):
        cur["output_uri"] = _resolve(base, cur["output_uri"])
    ev = dict(raw.get("evaluation", {}) or {})
    ev.setdefault("preset", "small")
    ev.setdefault("seeds", [0, 1, 2])
    if ev["preset"] not in PROXY_PRESETS:
        raise ConfigError(f"evaluation.preset {ev['preset']!r} unknown; known: {sorted(PROXY_PRESETS)}")
    tb = ev.get("token_budget")
    if tb is not None and tb != "selection" and (isinstance(tb, bool) or not isinstance(tb, int) or tb < 1):
        raise ConfigError(f"evaluation.token_budget must be a number of tokens (a seeded sample of each arm's "
                          f"selection) or 'selection' (each arm's whole selection), got {tb!r}")
    reg = {"folds": 5, "candidates": 200_000, "top_k": 128, "bootstrap": 30, "holdout": 0.2,
           "models": list(REGRESSORS), "min_runs_fraction": 0.9, **(raw.get("regressor") or {})}
    _known("regressor", reg, {"folds", "candidates", "top_k", "bootstrap", "holdout", "models", "seed",
                              "min_runs_fraction"})
    reg["min_runs_fraction"] = _fraction("regressor.min_runs_fraction", reg["min_runs_fraction"])
    bad = [m for m in reg["models"] if m not in REGRESSORS]
    if bad or not reg["models"]:
        raise ConfigError(f"regressor.models: unknown {bad}; known: {list(REGRESSORS)}")
    if not 0.0 <= float(reg["holdout"]) < 1.0:
        raise ConfigError(f"regressor.holdout must be in [0, 1), got {reg['holdout']!r}")
    comp = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "threads": None, "strategy": "auto",
            "workers": None, "shards_per_run": 64, "engine": "local", **(raw.get("compute") or {})}
    _known("compute", comp, {"accelerator", "devices", "precision", "threads", "strategy", "workers",
                             "shards_per_run", "engine", "ray"})
    if comp["engine"] not in ("local", "ray"):
        raise ConfigError(f"compute.engine must be local or ray, got {comp['engine']!r}")
    ray_cfg = dict(comp.get("ray") or {})
    _known("compute.ray", ray_cfg, {"num_cpus", "gpu_resource", "max_retries"})
    comp["ray"] = ray_cfg
    comp["shards_per_run"] = _int("compute.shards_per_run", comp["shards_per_run"], 1)
    if comp["workers"] not in (None, "auto"):
        comp["workers"] = _int("compute.workers", comp["workers"], 1)
    tok = raw.get("tokenizer", {}) or {}
    _known("tokenizer", tok, {"vocab_size", "path", "sample_docs"})
    mr = raw.get("model_raters", {}) or {}
    _known("model_raters", mr, {"registry", "scores"})
    model_scores = tuple(mr.get("scores") or ())
    registry_path = _resolve(base, mr["registry"]) if mr.get("registry") else None
    registry: dict = {}
    if model_scores:
        if not registry_path:
            raise ConfigError("model_raters.registry: a rater registry file is needed for model scores")
        registry = _registry(registry_path)
        unknown = [n for n in model_scores if n not in registry]
        if unknown:
            raise ConfigError(f"unknown model score(s) {unknown}; the registry has {sorted(registry)}")
    prrc = _prrc(raw.get("prrc"), base, model_scores)
    precomputed = _precomputed(raw.get("precomputed"), raters)
    sc = raw.get("scores", {}) or {}
    _known("scores", sc, {"orientation"})
    orientation = _orientation(sc.get("orientation"))
    st = raw.get("stats", {}) or {}
    _known("stats", st, {"sample_docs"})
    ing = raw.get("ingest", {}) or {}
    _known("ingest", ing, {"pack_bytes", "pack_max_files", "exclude", "text_field", "id_field", "meta_fields"})
    for f_ in ("text_field", "id_field"):
        if f_ in ing and (not isinstance(ing[f_], str) or not ing[f_].strip()):
            raise ConfigError(f"ingest.{f_} must be a field name or dotted path (e.g. content, meta.url), got {ing[f_]!r}")
    meta_fields = ing.get("meta_fields")
    if meta_fields is not None and (isinstance(meta_fields, str) or not all(isinstance(x, str) for x in meta_fields)):
        raise ConfigError(f"ingest.meta_fields must be a list of field names or dotted paths, got {meta_fields!r}")
    from .corpus import Fields

    fields = Fields(text=ing.get("text_field", "text"), id=ing.get("id_field", "id"),
                    meta=tuple(meta_fields) if meta_fields is not None else None)
    exclude = ing.get("exclude") or ()
    if isinstance(exclude, str) or not all(isinstance(x, str) for x in exclude):
        raise ConfigError(f"ingest.exclude must be a list of shard keys or glob patterns, got {exclude!r}")
    cfg = Config(
        prrc=prrc,
        raters=raters,
        dsir=DsirConfig(buckets=int(d.get("buckets", _dsir.DEFAULT_BUCKETS)), targets=targets),
        validation_sets=sets,
        validation_roles=roles,
        validation_max_docs=int(v.get("max_docs", 300)),
        validation_target=target,
        validation_held_out=held_out,
        tokenizer_vocab_size=int(tok.get("vocab_size", 8192)),
        tokenizer_path=_resolve(base, tok["path"]) if tok.get("path") and (
            "://" in tok["path"] or os.path.exists(_resolve(base, tok["path"]))) else tok.get("path"),
        tokenizer_sample_docs=int(tok.get("sample_docs", 200_000)),
        proxies=proxies,
        confirm=confirm,
        regressor=reg,
        curation=cur,
        evaluation=ev,
        compute=comp,
        source=source,
        model_registry=registry_path,
        model_scores=model_scores,
        registry=registry,
        precomputed=precomputed,
        orientation=orientation,
        stats_sample_docs=_int("stats.sample_docs", st.get("sample_docs", 5000), 10),
        pack_bytes=_bytes("ingest.pack_bytes", ing.get("pack_bytes", 0)),
        pack_max_files=_int("ingest.pack_max_files", ing.get("pack_max_files", 1000), 2),
        exclude=tuple(exclude),
        fields=fields,
        perplexity=perplexity_,
    )
    names = cfg.score_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"score(s) {dup} come from more than one rater; each score needs one source")
    unknown = sorted(set(orientation) - set(names) - {"default"})
    if unknown:
        raise ConfigError(f"scores.orientation: unknown score(s) {unknown}")
    return cfg


def _check_kind(section: str, kind: str, preset: str) -> None:
    if kind not in ("transformer", "ngram"):
        raise ConfigError(f"{section}.kind must be 'transformer' or 'ngram', got {kind!r}")
    if preset not in PROXY_PRESETS:
        raise ConfigError(f"{section}.preset {preset!r} unknown; known: {sorted(PROXY_PRESETS)}")


def _orientation(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"default": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError("scores.orientation must be high, low, auto or a mapping {score: high|low|auto}")
    bad = {k: v for k, v in raw.items() if v not in ORIENTATIONS}
    if bad:
        raise ConfigError(f"scores.orientation: {bad} not one of {list(ORIENTATIONS)}")
    return dict(raw)


def _precomputed(raw: Any, raters: tuple[str, ...]) -> tuple:
    from . import precomputed as pc

    if not raw:
        if "precomputed" in raters:
            raise ConfigError("raters lists precomputed but the config has no precomputed.scores mapping")
        return ()
    if "precomputed" not in raters:
        raise ConfigError("precomputed.scores is set but `precomputed` is not in raters")
    _known("precomputed", raw, {"scores"})
    try:
        sources = pc.parse(raw.get("scores") or {})
    except ValueError as e:
        raise ConfigError(f"precomputed.scores: {e}") from None
    if not sources:
        raise ConfigError("precomputed.scores: map at least one score to a column")
    return sources


_ANNOTATE_KEYS = {"base_url", "model", "api_key_env", "sample", "seed", "max_chars"}


def _prrc(raw: Any, base: str, model_scores: tuple[str, ...]) -> PrrcConfig | None:
    if not raw:
        return None
    from dataclasses import fields

    from .annotate import DIMENSIONS
    from .rater_training import TrainConfig
    from .storage import exists as _exists

    _known("prrc", raw, {"dims", "labels", "annotate", "train", "shared_encoder", "method"})
    dims = tuple(raw.get("dims") or DIMENSIONS)
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad:
        raise ConfigError(f"prrc.dims: unknown dimension(s) {bad}; PRRC dimensions: {list(DIMENSIONS)}")
    labels = _resolve(base, raw["labels"]) if raw.get("labels") else None
    ann = dict(raw.get("annotate") or {})
    if bool(labels) == bool(ann):
        raise ConfigError("prrc: give exactly one of `labels` (an annotation file) or `annotate` "
                          "(an OpenAI-compatible endpoint that labels a sample of the pool)")
    if labels and not _exists(labels):
        raise ConfigError(f"prrc.labels: {labels!r} does not exist")
    if ann:
        if "api_key" in raw or "api_key" in ann:
            raise ConfigError("prrc.annotate: never put an API key in the config; name the environment "
                              "variable that holds it with api_key_env")
        unknown = sorted(set(ann) - _ANNOTATE_KEYS)
        if unknown:
            raise ConfigError(f"prrc.annotate: unknown key(s) {unknown}; known: {sorted(_ANNOTATE_KEYS)}")
        for k in ("base_url", "model", "api_key_env"):
            if not ann.get(k):
                raise ConfigError(f"prrc.annotate.{k} is required")
    train = dict(raw.get("train") or {})
    known = {f.name for f in fields(TrainConfig)} - {"dims", "extra"}
    unknown = sorted(set(train) - known)
    if unknown:
        raise ConfigError(f"prrc.train: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        TrainConfig(dims=dims, **train)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"prrc.train: {e}") from None
    shared = raw.get("shared_encoder", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"prrc.shared_encoder must be true or false, got {shared!r}")
    method = raw.get("method", "finetune")
    if method not in ("finetune", "probe"):
        raise ConfigError(f"prrc.method must be 'finetune' or 'probe', got {method!r}")
    return PrrcConfig(dims=dims, labels=labels, annotate=ann, train=train, shared_encoder=shared, method=method)
