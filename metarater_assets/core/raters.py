"""Model raters: any Hugging Face sequence-classification model + a head that turns its logits
into one number per document (Meta-rater's PRRC, QuRating, FineWeb-Edu and WanjuanCC scores).

* Loading goes through ``AutoModelForSequenceClassification.from_pretrained(name_or_path,
  revision=...)`` with safetensors only and ``trust_remote_code`` off unless a registry entry
  turns it on; a hub id and a local folder take the same path. A model that cannot be loaded
  fails with ``RaterLoadError`` naming the model and how to point the registry at a local copy.
* Heads: ``argmax`` (class value of the top class), ``expected`` (sum of p(class) * value),
  ``regression`` (the single output, optionally clipped), ``head`` (output ``index`` of a
  multi-output regression model), ``prob`` (probability of class ``index``).
* Inference: documents sorted by length into batches with dynamic padding, a max-token limit,
  ``torch.inference_mode``, bf16 on GPU when asked; results come back in input order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .batching import padded_batches

RATERS_VERSION = "1"
HEAD_KINDS = ("argmax", "expected", "regression", "head", "prob")


class RaterLoadError(RuntimeError):
    """A model that cannot be loaded (offline, no local copy, wrong format, wrong head)."""


@dataclass(frozen=True)
class HeadSpec:
    kind: str
    index: int | None = None
    values: tuple[float, ...] | None = None
    clip: tuple[float, float] | None = None
    #: first logit of this head in a model with several heads side by side (a multi-dimension
    #: classifier: ``offset .. offset + len(values)`` are this score's classes)
    offset: int | None = None

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head {self.kind!r}; heads: {HEAD_KINDS}")
        if self.kind in ("head", "prob") and self.index is None:
            raise ValueError(f"head {self.kind!r} needs an index")
        if self.offset is not None and (self.values is None or self.kind not in ("argmax", "expected", "prob")):
            raise ValueError("a head offset needs `values` and a classification head (argmax/expected/prob)")

    def expected_outputs(self) -> int | None:
        """How many logits the model must produce (None: any; with an offset, at least this many)."""
        if self.kind == "regression":
            return 1
        if self.values is not None:
            return (self.offset or 0) + len(self.values)
        return None

    def outputs_match(self, n: int) -> bool:
        want = self.expected_outputs()
        return want is None or (n >= want if self.offset is not None else n == want)

    @property
    def is_classifier(self) -> bool:
        return self.kind in ("argmax", "expected", "prob")

    def classes(self, logits: np.ndarray) -> np.ndarray:
        """(B, C) logits -> (B,) the argmax class's value (a classifier head's grade); NaN for a
        regression head."""
        logits = np.asarray(logits, dtype=np.float64)
        if not self.is_classifier:
            return np.full(len(logits), np.nan)
        if self.offset is not None:
            logits = logits[:, self.offset:self.offset + len(self.values)]
        values = np.asarray(self.values if self.values is not None else np.arange(logits.shape[1]), dtype=np.float64)
        return values[np.argmax(logits, axis=1)]

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """(B, C) logits -> (B,) scores."""
        logits = np.asarray(logits, dtype=np.float64)
        C = logits.shape[1]
        if not self.outputs_match(C):
            raise RaterLoadError(f"model has {C} outputs but head {self.kind!r} expects {self.expected_outputs()}")
        if self.offset is not None:
            logits = logits[:, self.offset:self.offset + len(self.values)]
            C = logits.shape[1]
        if self.index is not None and not (0 <= self.index < C):
            raise RaterLoadError(f"head index {self.index} out of range for a model with {C} outputs")
        values = np.asarray(self.values if self.values is not None else np.arange(C), dtype=np.float64)
        if self.kind == "regression":
            out = logits[:, 0]
        elif self.kind == "head":
            out = logits[:, self.index]
        else:
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            if self.kind == "argmax":
                out = values[np.argmax(logits, axis=1)]
            elif self.kind == "expected":
                out = p @ values
            else:  # prob
                out = p[:, self.index]
        if self.clip is not None:
            out = np.clip(out, *self.clip)
        return out


@dataclass(frozen=True)
class RaterSpec:
    score: str
    model: str | None
    head: HeadSpec
    revision: str | None = None
    max_tokens: int = 512
    trust_remote_code: bool = False
    batch_size: int = 32

    @property
    def version(self) -> str:
        """Part of the score assets' code version: a new model or revision stales the score."""
        return f"{RATERS_VERSION}:{self.model}@{self.revision or 'main'}:{self.head}"


def parse_registry(raw: Mapping) -> dict[str, RaterSpec]:
    """Registry YAML: ``scores: {name: {model, revision, head: {kind, index, values, clip}, ...}}``."""
    out = {}
    for name, entry in (raw.get("scores") or {}).items():
        head = entry.get("head") or {}
        if isinstance(head, str):
            head = {"kind": head}
        spec = HeadSpec(kind=head.get("kind", "argmax"), index=head.get("index"),
                        values=tuple(head["values"]) if head.get("values") is not None else None,
                        clip=tuple(head["clip"]) if head.get("clip") is not None else None,
                        offset=int(head["offset"]) if head.get("offset") is not None else None)
        out[name] = RaterSpec(score=name, model=entry.get("model"), head=spec, revision=entry.get("revision"),
                              max_tokens=int(entry.get("max_tokens", 512)),
                              trust_remote_code=bool(entry.get("trust_remote_code", False)),
                              batch_size=int(entry.get("batch_size", 32)))
    return out


def _load_hint(spec: RaterSpec) -> str:
    return (f"set `scores.{spec.score}.model` in the rater registry to a local folder holding a copy "
            f"saved with save_pretrained (safetensors), e.g. /models/{(spec.model or spec.score).split('/')[-1]}")


class HFRater:
    """A loaded model + tokenizer + head for one score."""

    def __init__(self, spec: RaterSpec, device: str = "cpu", dtype: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not spec.model:
            raise RaterLoadError(f"score {spec.score!r} has no model in the registry; {_load_hint(spec)}")
        self.spec = spec
        self.device = device
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None, "fp32": torch.float32}[dtype]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.model, revision=spec.revision,
                                                           trust_remote_code=spec.trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                spec.model, revision=spec.revision, use_safetensors=True,
                trust_remote_code=spec.trust_remote_code, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise RaterLoadError(f"cannot load model {spec.model!r} (revision {spec.revision or 'main'}) "
                                 f"for score {spec.score!r}: {str(e).splitlines()[0]}. To use a local copy, "
                                 f"{_load_hint(spec)}") from e
        self.model.to(device).eval()
        n_out = int(self.model.config.num_labels)
        want = spec.head.expected_outputs()
        if not spec.head.outputs_match(n_out):
            raise RaterLoadError(f"model {spec.model!r} has {n_out} outputs but the registry's head for "
                                 f"{spec.score!r} ({spec.head.kind}) expects {want}")
        if spec.head.index is not None and spec.head.index >= n_out:
            raise RaterLoadError(f"head index {spec.head.index} out of range: {spec.model!r} has {n_out} outputs")

    @property
    def num_outputs(self) -> int:
        return int(self.model.config.num_labels)

    def logits(self, texts: Sequence[str], sort_by_length: bool = True,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, C) float logits, in input order; length-bucketed batches with dynamic padding."""
        import torch

        tok = self.tokenizer
        enc = tok(list(texts), truncation=True, max_length=self.spec.max_tokens, add_special_tokens=True)["input_ids"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out = np.empty((len(enc), self.num_outputs), dtype=np.float64)
        done = 0
        with torch.inference_mode():
            for idx, ids, mask in padded_batches(enc, self.spec.batch_size, pad, sort_by_length):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out[idx] = logits.float().cpu().numpy()
                done += len(idx)
                if progress:
                    progress(done, len(enc))
        return out

    def score(self, texts: Sequence[str], sort_by_length: bool = True,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        return self.score_heads(texts, [self.spec.head], sort_by_length, progress)[:, 0]

    def score_heads(self, texts: Sequence[str], heads: Sequence[HeadSpec], sort_by_length: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, len(heads)): one forward pass per batch, every head applied to its logits (the
        registry's scores that share a model and revision cost one pass)."""
        return apply_heads(self.logits(texts, sort_by_length, progress), heads, self.spec.model)[0]


def check_heads(n_out: int, heads: Sequence[HeadSpec], model: str | None) -> None:
    for h in heads:
        if not h.outputs_match(n_out):
            raise RaterLoadError(f"model {model!r} has {n_out} outputs but a head ({h.kind}) expects "
                                 f"{h.expected_outputs()}")


def apply_heads(logits: np.ndarray, heads: Sequence[HeadSpec], model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, classes), each (N, len(heads)); classes are NaN for non-classifier heads."""
    check_heads(logits.shape[1], heads, model)
    scores = np.empty((len(logits), len(heads)))
    classes = np.empty((len(logits), len(heads)))
    for j, h in enumerate(heads):
        scores[:, j] = h.apply(logits)
        classes[:, j] = h.classes(logits)
    return scores, classes


def load_rater(spec: RaterSpec, device: str = "cpu", dtype: str | None = None):
    """The rater behind a spec: a trained probe folder (``metarater_probe.json``) or any Hugging
    Face sequence classifier. Both give ``logits(texts)`` that the spec's head reads."""
    from .rater_training import PROBE_MARKER, ProbeRater

    if spec.model and "://" not in spec.model and os.path.exists(os.path.join(spec.model, PROBE_MARKER)):
        return ProbeRater(spec, device=device)
    return HFRater(spec, device=device, dtype=dtype)


def group_by_model(specs: Mapping[str, RaterSpec]) -> list[list[RaterSpec]]:
    """Specs that can share one loaded model (same model, revision, tokens, remote-code flag)."""
    groups: dict[tuple, list[RaterSpec]] = {}
    for s in specs.values():
        groups.setdefault((s.model, s.revision, s.max_tokens, s.trust_remote_code, s.batch_size), []).append(s)
    return list(groups.values())
