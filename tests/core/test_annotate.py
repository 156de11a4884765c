"""The annotation client against a small local OpenAI-compatible server started by the test."""
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metarater_assets.core import annotate
from conftest import chat_reply

SECRET = "sk-test-do-not-log-7c1e"


class _Handler(BaseHTTPRequestHandler):
    calls: list = []
    fail_first = 0
    status = 200  # every request answered with this status when not 200
    answers = {"professionalism": "Score: 4", "readability": '{"score": 3}', "reasoning": "**2**",
               "cleanliness": "I would say 5/5"}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_first > 0 or type(self).status != 200:
            type(self).fail_first -= 1
            self.send_response(503 if type(self).status == 200 else type(self).status)
            self.end_headers()
            return
        system = body["messages"][0]["content"]
        dim = next(d for d, r in annotate.RUBRICS.items() if system.startswith(r))
        text = body["messages"][1]["content"]
        content = "no idea" if "unparseable" in text else self.answers[dim]
        chat_reply(self, content)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.calls = []
    _Handler.fail_first = 0
    _Handler.status = 200
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_rates_four_dimensions_with_retries_cache_and_no_key_leak(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MR_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    _Handler.fail_first = 2  # two 503s: retried with backoff
    cache = tmp_path / "cache.jsonl"
    client = annotate.ChatAnnotator(server, "judge-1", api_key_env="MR_TEST_KEY", cache_path=str(cache),
                                    backoff=0.01)
    rows, errors = client.annotate(["A well written paragraph about compilers.", "unparseable please"])
    assert rows[0] == {"professionalism": 4, "readability": 3, "reasoning": 2, "cleanliness": 5}
    assert rows[1] == {d: None for d in annotate.DIMENSIONS}
    assert errors[0] == {} and all("no 0..5 score in the answer" in errors[1][d] for d in annotate.DIMENSIONS)
    assert _Handler.calls[0]["auth"] == f"Bearer {SECRET}" and _Handler.calls[0]["body"]["temperature"] == 0
    n = len(_Handler.calls)
    assert n == 2 + 8
    # cached per document: a new client with the same cache file makes no request for known texts
    again = annotate.ChatAnnotator(server, "judge-1", api_key_env="MR_TEST_KEY", cache_path=str(cache))
    assert again.annotate(["A well written paragraph about compilers."])[0][0]["reasoning"] == 2
    assert len(_Handler.calls) == n
    # the key never reaches logs, reprs, errors or the cache
    assert SECRET not in caplog.text and SECRET not in repr(client) and SECRET not in cache.read_text()
    with pytest.raises(annotate.AnnotationError) as e:
        client.rate("unparseable please", "reasoning")
    assert SECRET not in str(e.value)


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MR_TEST_KEY", SECRET)
    client = annotate.ChatAnnotator("http://127.0.0.1:9/v1", "m", api_key_env="MR_TEST_KEY", max_retries=1,
                                    backoff=0.01, timeout=2)
    with pytest.raises(annotate.AnnotationError, match="ConnectionError after 1 retries"):
        client.rate("text", "readability")
    rows, errors = client.annotate(["text"], ["readability"])  # a batch keeps the cause
    assert rows == [{"readability": None}] and "ConnectionError after 1 retries" in errors[0]["readability"]


def test_a_missing_key_fails_before_the_first_request(server, monkeypatch):
    monkeypatch.delenv("MR_UNSET_KEY", raising=False)
    with pytest.raises(annotate.AnnotationAuthError, match="MR_UNSET_KEY .* is not set"):
        annotate.ChatAnnotator(server, "m", api_key_env="MR_UNSET_KEY")
    assert _Handler.calls == []


@pytest.mark.parametrize("status,fatal", [(401, True), (403, True), (500, False)])
def test_refused_key_stops_and_server_errors_keep_their_cause(server, monkeypatch, status, fatal):
    monkeypatch.setenv("MR_TEST_KEY", SECRET)
    _Handler.status = status
    client = annotate.ChatAnnotator(server, "m", api_key_env="MR_TEST_KEY", max_retries=2, backoff=0.01)
    if fatal:
        with pytest.raises(annotate.AnnotationAuthError, match=f"HTTP {status}: the endpoint refused the key"):
            client.annotate(["a text", "another"])
        assert len(_Handler.calls) == 1  # stopped at once, not 8 requests
    else:
        rows, errors = client.annotate(["a text"], ["reasoning"])
        assert rows == [{"reasoning": None}] and errors == [{"reasoning": f"{server}/chat/completions: HTTP 500 after 2 retries"}]


def test_cache_on_a_remote_uri(server, monkeypatch):
    """The per-document cache works on any fsspec URI (here memory://): answers survive a new client."""
    import fsspec

    monkeypatch.setenv("MR_TEST_KEY", SECRET)
    uri = "memory://mr-annotate/cache.jsonl"
    a = annotate.ChatAnnotator(server, "judge-1", api_key_env="MR_TEST_KEY", cache_path=uri)
    a.annotate(["A well written paragraph about compilers."])
    n = len(_Handler.calls)
    assert n == 4 and fsspec.filesystem("memory").exists("/mr-annotate/cache.jsonl")
    b = annotate.ChatAnnotator(server, "judge-1", api_key_env="MR_TEST_KEY", cache_path=uri)
    assert b.annotate(["A well written paragraph about compilers."])[0][0]["cleanliness"] == 5
    assert len(_Handler.calls) == n


@pytest.mark.parametrize("answer,score", [("Score: 4", 4), ('{"score": 0}', 0), ("**5**", 5), ("3/5", 3),
                                          ("The score is 2.", 2), ("seven", None), ("Score: 9", None)])
def test_parse_score(answer, score):
    assert annotate.parse_score(answer) == score


def test_label_validation():
    rows = [{"id": "a", "professionalism": 3, "readability": 6, "reasoning": 2},
            {"id": "b", "professionalism": 1, "readability": 2, "reasoning": True, "cleanliness": 4}]
    problems = annotate.validate_labels(rows)
    assert "row 0 (a): readability=6 outside 0..5" in problems
    assert "row 0 (a): missing cleanliness" in problems
    assert "row 1 (b): reasoning=True outside 0..5" in problems
