"""Security: remote code off unless a registry entry turns it on, safetensors only, checkpoints read
with weights_only, the UI on loopback by default, secrets never in the config, and partition keys
that cannot leave the storage root. (API keys kept out of logs, metadata and files: see
tests/assets/test_prrc.py and tests/core/test_annotate.py.)"""
import ast
import json
from pathlib import Path

import pytest
import torch

from metarater_assets.cli import main as cli_main
from metarater_assets.core import corpus, proxy_lm, raters
from resources.storage import JsonIOManager, ShardFiles
from conftest import REPO, SAMPLE


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("tiny")
    texts = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.column("text").to_pylist()[:30]
    tok = proxy_lm.train_tokenizer(texts, vocab_size=300)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=6, pad_token_id=tok.pad_token_id)
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _spec(path, **kw):
    return raters.RaterSpec(score="professionalism", model=str(path),
                            head=raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5)), **kw)


def test_registry_and_specs_default_to_no_remote_code():
    import yaml

    reg = raters.parse_registry(yaml.safe_load((REPO / "configs" / "raters.yaml").read_text()))
    assert not any(s.trust_remote_code for s in reg.values())
    assert _spec("x").trust_remote_code is False


def test_a_model_shipping_remote_code_loads_without_running_it(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    rater = raters.HFRater(_spec(d))  # auto_map is ignored: the built-in BERT class loads, no code runs
    assert type(rater.model).__module__.startswith("transformers.")


def test_pickle_weights_are_not_loaded(tiny_dir, tmp_path):
    """A folder with only pytorch_model.bin (pickle) is refused: safetensors only."""
    import shutil

    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(tiny_dir, d)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(raters.RaterLoadError, match="cannot load model"):
        raters.HFRater(_spec(d))


def test_every_torch_load_in_the_code_uses_weights_only():
    calls = []
    for py in list((REPO / "metarater_assets").rglob("*.py")) + list((REPO / "resources").rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" \
                    and getattr(getattr(node.func, "value", None), "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                calls.append((py.name, isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value))
    assert calls and all(ok for _, ok in calls), calls


def test_ui_binds_loopback_by_default(monkeypatch):
    seen = {}

    class FakeProc:
        pid = 2 ** 22 + 12345  # no such process group

        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr("subprocess.Popen", FakeProc)
    cli_main(["ui"])
    cmd = seen["cmd"]
    assert cmd[cmd.index("-h") + 1] == "127.0.0.1"


@pytest.mark.parametrize("key", ["../../etc/passwd", "..", "a/../../b", "/abs/path", "x/../../../y.parquet"])
def test_partition_keys_cannot_leave_the_storage_root(tmp_path, key):
    from upath import UPath

    io = JsonIOManager(base_path=str(tmp_path / "storage")).create_io_manager(None)
    path = io.make_safe_partition_path(UPath(tmp_path / "storage" / "proxy_run"), key)
    resolved = Path(str(path)).resolve()
    assert str(resolved).startswith(str((tmp_path / "storage" / "proxy_run").resolve()))
    shard_file = Path(ShardFiles(str(tmp_path / "storage")).uri("raw_docs", key)).resolve()
    assert str(shard_file).startswith(str((tmp_path / "storage" / "raw_docs").resolve()) + "/")
    # and the keys the ingest makes from file names never contain a separator or '..'
    safe = corpus.partition_key(key)
    assert "/" not in safe and "\\" not in safe and not safe.startswith(".")
