"""Run configuration (YAML) as frozen, validated dataclasses. No environment lookups here."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from . import dsir as _dsir
from .proxy_lm import PROXY_PRESETS
from .signals import SIGNAL_NAMES

#: Rater groups and the scores each provides. Model raters join in a later stage.
RATERS: dict[str, tuple[str, ...]] = {
    "rpv2": SIGNAL_NAMES,
    "dsir": ("dsir_books", "dsir_wiki", "dsir_math"),
}


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


@dataclass(frozen=True)
class DsirConfig:
    buckets: int = _dsir.DEFAULT_BUCKETS
    targets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxiesConfig:
    n: int = 16
    seed: int = 0
    fraction: float = 0.15
    fraction_of: str = "tokens"
    kind: str = "transformer"
    preset: str = "tiny"
    token_budget: int | None = None
    single_score_runs: bool = True


@dataclass(frozen=True)
class PrrcConfig:
    """Meta-rater's own raters: PRRC labels (a file, or an LLM endpoint annotating a sample of the
    pool) and the encoder trained on them, which then serves these ``dims`` of model_scores."""

    dims: tuple[str, ...]
    labels: str | None = None
    annotate: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    #: one encoder for all dimensions (cheaper) instead of one per dimension (the paper's layout)
    shared_encoder: bool = False


@dataclass(frozen=True)
class Config:
    raters: tuple[str, ...]
    dsir: DsirConfig
    validation_sets: Mapping[str, str]
    validation_max_docs: int
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

    @property
    def trained_scores(self) -> tuple[str, ...]:
        """Model scores served by the PRRC rater this project trains (not the registry's model)."""
        return tuple(n for n in self.model_scores if self.prrc and n in self.prrc.dims)

    @property
    def score_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for r in self.raters:
            names.extend(RATERS[r])
        return tuple(names) + tuple(self.model_scores)

    def rater_specs(self) -> dict:
        """RaterSpec of every active model score (empty when none is configured)."""
        if not self.model_scores:
            return {}
        from .raters import parse_registry
        from .storage import fs_and_path

        fs, p = fs_and_path(self.model_registry)
        with fs.open(p, "r") as f:
            reg = parse_registry(yaml.safe_load(f) or {})
        return {n: reg[n] for n in self.model_scores if n not in self.trained_scores}


def load_config(path: str) -> Config:
    from .storage import fs_and_path

    fs, p = fs_and_path(path)
    if not fs.exists(p):
        raise ConfigError(f"config file {path!r} does not exist")
    with fs.open(p, "r") as f:
        raw = yaml.safe_load(f) or {}
    base = os.path.dirname(os.path.abspath(path)) if "://" not in path else path.rsplit("/", 1)[0]
    return parse_config(raw, base, source=path)


def parse_config(raw: Mapping[str, Any], base: str = ".", source: str = "") -> Config:
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
    sets = {k: _resolve(base, u) for k, u in (v.get("sets") or {}).items()}
    if not sets:
        raise ConfigError("validation.sets: at least one validation set is needed")
    target = str(v.get("target", "mean"))
    if target != "mean" and target not in sets:
        raise ConfigError(f"validation.target must be 'mean' or one of {sorted(sets)}, got {target!r}")
    from .storage import exists as _exists

    for field_name, uris in (("dsir.targets", targets), ("validation.sets", sets)):
        for k, u in uris.items():
            if not _exists(u):
                raise ConfigError(f"{field_name}.{k}: {u!r} does not exist")
    p = dict(raw.get("proxies", {}) or {})
    proxies = ProxiesConfig(**p)
    if proxies.n < 1:
        raise ConfigError(f"proxies.n must be >= 1 (got {proxies.n}): the regressor needs proxy runs")
    _fraction("proxies.fraction", proxies.fraction)
    if proxies.kind not in ("transformer", "ngram"):
        raise ConfigError(f"proxies.kind must be 'transformer' or 'ngram', got {proxies.kind!r}")
    if proxies.fraction_of not in ("tokens", "docs"):
        raise ConfigError("proxies.fraction_of must be 'tokens' or 'docs'")
    if proxies.preset not in PROXY_PRESETS:
        raise ConfigError(f"proxies.preset {proxies.preset!r} unknown; known: {sorted(PROXY_PRESETS)}")
    cur = dict(raw.get("curation", {}) or {})
    cur["fraction"] = _fraction("curation.fraction", cur.get("fraction", 0.15))
    cur.setdefault("fraction_of", "tokens")
    cur.setdefault("format", "parquet")
    if cur["format"] not in ("parquet", "jsonl.zst"):
        raise ConfigError("curation.format must be 'parquet' or 'jsonl.zst'")
    if cur.get("weights_file"):
        cur["weights_file"] = _resolve(base, cur["weights_file"])
    ev = dict(raw.get("evaluation", {}) or {})
    ev.setdefault("preset", "small")
    ev.setdefault("seeds", [0, 1, 2])
    if ev["preset"] not in PROXY_PRESETS:
        raise ConfigError(f"evaluation.preset {ev['preset']!r} unknown; known: {sorted(PROXY_PRESETS)}")
    tok = raw.get("tokenizer", {}) or {}
    mr = raw.get("model_raters", {}) or {}
    model_scores = tuple(mr.get("scores") or ())
    registry = _resolve(base, mr["registry"]) if mr.get("registry") else None
    if model_scores:
        from .raters import parse_registry
        from .storage import fs_and_path

        if not registry:
            raise ConfigError("model_raters.registry: a rater registry file is needed for model scores")
        fs, rp = fs_and_path(registry)
        if not fs.exists(rp):
            raise ConfigError(f"model_raters.registry {registry!r} does not exist")
        with fs.open(rp, "r") as f:
            known = parse_registry(yaml.safe_load(f) or {})
        unknown = [n for n in model_scores if n not in known]
        if unknown:
            raise ConfigError(f"unknown model score(s) {unknown}; the registry has {sorted(known)}")
    prrc = _prrc(raw.get("prrc"), base, model_scores)
    return Config(
        prrc=prrc,
        raters=raters,
        dsir=DsirConfig(buckets=int(d.get("buckets", _dsir.DEFAULT_BUCKETS)), targets=targets),
        validation_sets=sets,
        validation_max_docs=int(v.get("max_docs", 300)),
        validation_target=target,
        tokenizer_vocab_size=int(tok.get("vocab_size", 8192)),
        tokenizer_path=tok.get("path"),
        tokenizer_sample_docs=int(tok.get("sample_docs", 200_000)),
        proxies=proxies,
        regressor={"folds": 5, "candidates": 200_000, "top_k": 128, "bootstrap": 30,
                   **(raw.get("regressor") or {})},
        curation=cur,
        evaluation=ev,
        compute={"accelerator": "cpu", "devices": 1, "precision": "32-true", "threads": None,
                 **(raw.get("compute") or {})},
        source=source,
        model_registry=registry,
        model_scores=model_scores,
    )


_ANNOTATE_KEYS = {"base_url", "model", "api_key_env", "sample", "seed", "max_chars"}


def _prrc(raw: Any, base: str, model_scores: tuple[str, ...]) -> PrrcConfig | None:
    if not raw:
        return None
    from dataclasses import fields

    from .annotate import DIMENSIONS
    from .rater_training import TrainConfig
    from .storage import exists as _exists

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
        for k in ("base_url", "model"):
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
    return PrrcConfig(dims=dims, labels=labels, annotate=ann, train=train, shared_encoder=shared)
