import gzip
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TEST_DATA = Path(__file__).resolve().parent / "data"


def read_jsonl_lines(path: Path) -> list[str]:
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "rt", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def write_copies(path: Path, lines: list[str], copies: int, tag: str = "") -> Path:
    """A JSONL file of ``copies`` copies of real sample ``lines``, each copy's ids made unique
    (``<id>-<tag>-<copy>``): a big enough file to be killed in the middle of."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i in range(copies):
            for line in lines:
                obj = json.loads(line)
                obj["id"] = f"{obj['id']}-{tag}-{i}" if tag else f"{obj['id']}-{i}"
                f.write(json.dumps(obj) + "\n")
    return path


def write_small_shards(dest: Path, n: int = 150) -> Path:
    """Two small shards (gz + parquet) cut from the bundled sample."""
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")[:n]
    with gzip.open(dest / "shard-0000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(lines)
    t = pq.read_table(SAMPLE / "raw" / "shard-0002.parquet").slice(0, n)
    pq.write_table(t, dest / "shard-0002.parquet")
    return dest


def write_config(path: Path, **over) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for name in ("books", "wiki", "math"):
        cfg["dsir"]["targets"][name] = str(SAMPLE / "targets" / f"{name}.jsonl.gz")
    cfg["validation"]["sets"] = {"validation": str(SAMPLE / "validation.jsonl.gz"),
                                 "reference": str(SAMPLE / "reference.jsonl.gz")}
    cfg["validation"]["max_docs"] = 40
    cfg["tokenizer"]["vocab_size"] = 1024
    cfg["proxies"].update(n=6, kind="ngram", preset="test", token_budget=4096)
    cfg["regressor"].update(candidates=20000, bootstrap=5, folds=3)
    cfg["compute"].update(workers=1, shards_per_run=8)
    cfg["evaluation"].update(preset="test", token_budget=2048, seeds=[0, 1])
    # PRRC training is tested on its own (tests/core/test_rater_training.py, tests/assets/test_prrc.py)
    cfg.pop("prrc", None)
    cfg.pop("confirm", None)  # tier 2 (transformer proxies) is tested on its own (test_pipeline)
    cfg["model_raters"].update(scores=[], registry=str(REPO / "configs" / "raters.yaml"))
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_tiny_encoder(dest: Path, texts: list[str]) -> str:
    """A tiny BERT (1 layer, width 32) + a BPE tokenizer trained on ``texts``, saved with
    ``save_pretrained``: the PRRC fine-tuning path at a test's cost, loaded through the same
    ``from_pretrained`` as a hub model."""
    import torch
    from transformers import BertConfig, BertModel

    from metarater_assets.core import proxy_lm

    tok = proxy_lm.train_tokenizer(texts, vocab_size=600)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id)).save_pretrained(dest)
    tok.save_pretrained(dest)
    return str(dest)


def save_tiny_rater(tmp_path: Path, name: str, labels: int, seed: int) -> str:
    """A tiny BERT sequence classifier (``labels`` outputs) + tokenizer saved under
    ``tmp_path/name``: a registry model rater at a test's cost."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from metarater_assets.core import corpus, proxy_lm

    texts = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.column("text").to_pylist()[:50]
    tok = proxy_lm.train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, num_labels=labels, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / name)
    tok.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


@pytest.fixture(autouse=True, scope="module")
def _own_dagster_home():
    """A test file that exports DAGSTER_HOME (``Settings.ensure_dagster_home``) must not hand its
    Dagster instance to the next file a worker runs: the variable is put back after each file."""
    before = os.environ.get("DAGSTER_HOME")
    yield
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before


@pytest.fixture
def env_home(tmp_path, monkeypatch):
    """An isolated METARATER_HOME + DAGSTER_HOME, two small shards and a fast config."""
    raw = write_small_shards(tmp_path / "raw")
    cfg = write_config(tmp_path / "config.yaml")
    monkeypatch.setenv("METARATER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METARATER_RAW_URI", str(raw))
    monkeypatch.setenv("METARATER_CONFIG", str(cfg))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    from resources import Settings

    s = Settings.from_env()
    s.ensure_dagster_home()
    yield s
    os.environ.pop("DAGSTER_HOME", None)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children in other sessions included, e.g. dagster dev's)."""
    import subprocess

    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    kids: dict[int, list[int]] = {}
    for line in out:
        if line.strip():
            p, pp = map(int, line.split())
            kids.setdefault(pp, []).append(p)
    todo, seen = [pid], []
    while todo:
        for c in kids.get(todo.pop(), []):
            seen.append(c)
            todo.append(c)
    return seen


def stop_group(proc, grace: float = 45) -> None:
    """Stop a process started with start_new_session=True and everything it started, also what it
    started in sessions of its own (``metarater ui`` runs dagster dev in one): SIGTERM to the group,
    SIGKILL after ``grace`` seconds to the group and to every descendant still alive."""
    import signal
    import subprocess

    kids = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for k in kids + descendants(proc.pid):
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def chat_reply(handler, content: str) -> None:
    """Answer an OpenAI-style /chat/completions request from a test's BaseHTTPRequestHandler."""
    import json

    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


#: test folders by how long their files take (the servers, daemons, clusters and killed runs of
#: e2e first): pytest-xdist's ``--dist loadfile`` hands files out in collection order, so the long
#: files start first and the short ones fill the workers' tails (longest first, the classic
#: balance); measured in `make test`'s durations
_FIRST = ("tests/e2e/test_differential.py", "tests/e2e/test_ray.py", "tests/e2e/test_daemon.py",
          "tests/e2e/test_crash_stages.py", "tests/assets/test_pipeline.py", "tests/e2e/", "tests/assets/")


def _rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return next((i for i, prefix in enumerate(_FIRST) if path.startswith(prefix)), len(_FIRST))


def pytest_collection_modifyitems(config, items):
    """Long files first (above). METARATER_TEST_ORDER=reverse (CI) runs the tests of each of those
    groups in reverse order, the files and each file's tests: a check that no test depends on
    another one having run first (module fixtures are shared, tests work on clones)."""
    if os.environ.get("METARATER_TEST_ORDER") == "reverse":
        items.reverse()
    items.sort(key=_rank)  # stable: a group keeps its (reversed) order, a file's tests stay together
