"""Generic HF rater: tiny models saved locally and reloaded through from_pretrained, per head."""
import numpy as np
import pytest
import torch
import yaml

from metarater_assets.core import corpus, proxy_lm, raters
from conftest import REPO, SAMPLE


@pytest.fixture(scope="module")
def texts():
    return corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.column("text").to_pylist()[:40]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return proxy_lm.train_tokenizer(texts, vocab_size=300)


def _tiny(tokenizer, tmp, num_labels, problem=None):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=num_labels,
                     pad_token_id=tokenizer.pad_token_id, problem_type=problem)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    return model


def _reference_logits(model, tokenizer, texts, max_tokens):
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = tokenizer(t, truncation=True, max_length=max_tokens, return_tensors="pt")["input_ids"]
            out.append(model(input_ids=ids).logits[0].numpy())
    return np.stack(out)


def _softmax(z):
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64), dim=1).numpy()


#: each head's value computed here from the reference logits, independently of HeadSpec.apply
INDEPENDENT = {
    "argmax": lambda z: np.argmax(z, axis=1).astype(float),
    "expected": lambda z: _softmax(z) @ np.arange(6.0),
    "regression": lambda z: np.clip(z[:, 0], 0, 5),
    "head": lambda z: z[:, 2],
    "prob": lambda z: _softmax(z)[:, 1],
    "offset": lambda z: _softmax(z[:, 12:18]) @ np.arange(6.0),
}


@pytest.mark.parametrize("name,head,labels", [
    ("argmax", raters.HeadSpec("argmax", values=(0, 1, 2, 3, 4, 5)), 6),
    ("expected", raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5)), 6),
    ("regression", raters.HeadSpec("regression", clip=(0, 5)), 1),
    ("head", raters.HeadSpec("head", index=2), 4),
    ("prob", raters.HeadSpec("prob", index=1), 2),
    ("offset", raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5), offset=12), 24),  # 3rd of 4 six-class heads
])
def test_each_head_through_from_pretrained(tmp_path, tokenizer, texts, name, head, labels):
    model = _tiny(tokenizer, tmp_path, labels, "regression" if head.kind in ("regression", "head") else None)
    spec = raters.RaterSpec(score="s", model=str(tmp_path), head=head, max_tokens=64, batch_size=8)
    rater = raters.HFRater(spec)
    got = rater.score(texts)
    logits = _reference_logits(model, tokenizer, texts, 64)  # one document at a time, no padding
    np.testing.assert_allclose(got, INDEPENDENT[name](logits), atol=1e-4)
    np.testing.assert_allclose(rater.score(texts, sort_by_length=False), got, atol=1e-4)
    scores, classes = raters.apply_heads(rater.logits(texts), [head])
    if head.is_classifier:  # the <score>_class column: the argmax grade of this head's classes
        z = logits[:, 12:18] if name == "offset" else logits
        np.testing.assert_array_equal(classes[:, 0], np.argmax(z, axis=1))
    else:
        assert np.isnan(classes).all()


def test_head_size_mismatch_is_a_clear_error(tmp_path, tokenizer):
    _tiny(tokenizer, tmp_path, 2)
    spec = raters.RaterSpec(score="fineweb_edu", model=str(tmp_path), head=raters.HeadSpec("regression"))
    with pytest.raises(raters.RaterLoadError, match="has 2 outputs but the registry's head"):
        raters.HFRater(spec)


def test_missing_model_names_it_and_how_to_fix(tmp_path):
    spec = raters.RaterSpec(score="professionalism", model=str(tmp_path / "nope"),
                            head=raters.HeadSpec("argmax"))
    with pytest.raises(raters.RaterLoadError) as e:
        raters.HFRater(spec)
    assert "nope" in str(e.value) and "save_pretrained" in str(e.value)
    with pytest.raises(raters.RaterLoadError, match="has no model in the registry"):
        raters.HFRater(raters.RaterSpec(score="w", model=None, head=raters.HeadSpec("prob", index=1)))


def test_registry_covers_the_eleven_paper_scores():
    reg = raters.parse_registry(yaml.safe_load((REPO / "configs" / "raters.yaml").read_text()))
    assert len(reg) == 11
    assert not any(s.trust_remote_code for s in reg.values())
    assert reg["fineweb_edu"].head.kind == "regression"
    assert reg["professionalism"].version != reg["readability"].version


def test_heads_sharing_a_model_cost_one_pass_and_match_one_by_one(tmp_path, tokenizer, texts):
    _tiny(tokenizer, tmp_path, 24)
    specs = {f"d{i}": raters.RaterSpec(score=f"d{i}", model=str(tmp_path), max_tokens=64, batch_size=8,
                                       head=raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5), offset=6 * i))
             for i in range(4)}
    groups = raters.group_by_model(specs)
    assert len(groups) == 1 and [s.score for s in groups[0]] == ["d0", "d1", "d2", "d3"]
    rater = raters.HFRater(groups[0][0])
    together = rater.score_heads(texts, [s.head for s in groups[0]])
    for i, s in enumerate(groups[0]):
        np.testing.assert_allclose(together[:, i], raters.HFRater(s).score(texts), atol=1e-6)
    assert not np.allclose(together[:, 0], together[:, 1])  # each head reads its own six logits


def test_offset_head_needs_enough_outputs(tmp_path, tokenizer):
    _tiny(tokenizer, tmp_path, 12)
    spec = raters.RaterSpec(score="s", model=str(tmp_path),
                            head=raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5), offset=12))
    with pytest.raises(raters.RaterLoadError, match="has 12 outputs"):
        raters.HFRater(spec)
    with pytest.raises(ValueError, match="offset needs"):
        raters.HeadSpec("regression", offset=3)
