"""The HTTP service on the tiny run: every route, every kind of bad request, concurrent
requests merged into batches with the answers of sequential ones, and a real server on a
loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from minbert.eval.predictor import Predictor
from minbert.serve.http import create_app
from minbert.serve.settings import ServeSettings

LIMITS = ServeSettings(max_items=8, max_text_bytes=64, max_body_bytes=4096, max_wait_ms=20)


@pytest.fixture(scope="module")
def predictor(finished_tiny_run) -> Predictor:
    return Predictor.from_run(finished_tiny_run)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, LIMITS, name="tiny")) as c:
        yield c


TEXTS = ["a good film", "the dog was not great", "bad"]
PAIRS = [["the cat is good", "a cat was good"], ["a dog", "the movie is bad"]]


def test_sentiment_gives_class_name_and_probabilities(client, predictor):
    body = client.post("/v1/sentiment", json={"texts": TEXTS}).json()
    assert body["task"] == "sst"
    labels = [r["label"] for r in body["results"]]
    assert labels == predictor.predict("sst", TEXTS).tolist()
    for r in body["results"]:
        assert r["name"] in {"very negative", "negative", "neutral", "positive", "very positive"}
        assert len(r["probabilities"]) == 5 and abs(sum(r["probabilities"]) - 1) < 1e-5
        assert int(np.argmax(r["probabilities"])) == r["label"]


def test_paraphrase_and_similarity_agree_with_the_predictor(client, predictor):
    pairs = [tuple(p) for p in PAIRS]
    para = client.post("/v1/paraphrase", json={"pairs": PAIRS}).json()["results"]
    assert [r["duplicate"] for r in para] == predictor.predict("quora", pairs).astype(bool).tolist()
    assert all(0 <= r["probability"] <= 1 for r in para)
    assert all((r["probability"] > 0.5) == r["duplicate"] for r in para)  # no calibration here
    sim = client.post("/v1/similarity", json={"pairs": PAIRS}).json()["results"]
    np.testing.assert_allclose(
        [r["score"] for r in sim], predictor.predict("sts", pairs), atol=1e-5
    )


def test_embed_routes_give_the_heads_sentence_vectors(client, predictor):
    body = client.post("/v1/embed", json={"texts": TEXTS}).json()
    assert body["task"] == "sts"  # the bi-encoded task by default
    np.testing.assert_allclose(body["embeddings"], predictor.embed("sts", TEXTS), atol=1e-5)
    sst = client.post("/v1/embed", json={"texts": TEXTS, "task": "sst"}).json()
    assert sst["dimension"] == 32
    tei = np.array(client.post("/embed", json={"inputs": TEXTS}).json())
    np.testing.assert_allclose(np.linalg.norm(tei, axis=1), 1, atol=1e-5)
    one = client.post("/embed", json={"inputs": "a film", "normalize": False}).json()
    np.testing.assert_allclose(one, predictor.embed("sts", ["a film"]), atol=1e-5)
    refused = client.post("/v1/embed", json={"texts": TEXTS, "task": "quora"})
    assert refused.status_code == 422 and "encodes its pairs together" in refused.text


def test_tei_predict_ranks_every_label(client):
    ranked = client.post("/predict", json={"inputs": "a good film"}).json()
    assert len(ranked) == 5 and ranked[0]["score"] >= ranked[-1]["score"]
    pairs = client.post("/predict", json={"inputs": PAIRS}).json()
    assert [len(r) for r in pairs] == [2, 2]
    assert {x["label"] for x in pairs[0]} == {"duplicate", "not duplicate"}


def test_health_info_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["tasks"] == ["sst", "quora", "sts"] and info["parameters"] > 0
    assert info["limits"]["max_items"] == 8 and info["max_length"] == 32
    assert info["versions"]["torch"]
    client.post("/v1/sentiment", json={"texts": []})
    text = client.get("/metrics").text
    assert 'minbert_requests_total{route="/v1/sentiment",status="200"}' in text
    assert 'minbert_errors_total{route="/v1/sentiment"}' in text
    assert "minbert_request_seconds_bucket" in text and "minbert_batch_size_bucket" in text
    assert client.get("/docs").status_code == 200


def test_a_task_the_run_did_not_train_is_a_404_naming_the_served_ones(client, predictor):
    r = client.post("/v1/sentiment", json={"texts": ["a"], "task": "cfimdb"})
    assert r.status_code == 404 and "['sst', 'quora', 'sts']" in r.json()["error"]["message"]

    class OnlySst:  # a run that trained SST alone
        tasks = ["sst"]
        backend, config, parameters = "torch", predictor.config, predictor.parameters
        outputs, embed = predictor.outputs, predictor.embed
        embeds_sentences, threshold = predictor.embeds_sentences, predictor.threshold

    with TestClient(create_app(OnlySst())) as only_sst:
        for route in ("/v1/paraphrase", "/v1/similarity"):
            r = only_sst.post(route, json={"pairs": PAIRS})
            assert r.status_code == 404 and "it serves ['sst']" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "route, body, status, field, message",
    [
        ("/v1/sentiment", b'{"texts": ["a"', 400, "body", "malformed JSON"),
        ("/v1/sentiment", b"not json", 400, "body", "malformed JSON"),
        ("/v1/sentiment", {"texts": "a film"}, 422, "texts", "list"),
        ("/v1/sentiment", {"texts": [1, 2]}, 422, "texts.0", "string"),
        ("/v1/sentiment", {"words": ["a"]}, 422, "texts", "required"),
        ("/v1/sentiment", {"texts": ["a"], "extra": 1}, 422, "extra", "not permitted"),
        ("/v1/sentiment", {"texts": []}, 422, "texts", "empty list"),
        ("/v1/sentiment", {"texts": ["a", ""]}, 422, "texts[1]", "empty text"),
        ("/v1/sentiment", {"texts": ["a", "\u200b\u0000 "]}, 422, "texts[1]", "empty text"),
        ("/v1/sentiment", {"texts": ["a"] * 9}, 422, "texts", "over the limit of 8"),
        ("/v1/sentiment", {"texts": ["é" * 40]}, 422, "texts[0]", "over the limit of 64 bytes"),
        ("/v1/paraphrase", {"pairs": [["a"]]}, 422, "pairs.0", ""),
        ("/v1/paraphrase", {"pairs": [["a", " "]]}, 422, "pairs[0][1]", "empty text"),
        ("/predict", {"inputs": ["a", ["b", "c"]]}, 422, "inputs", ""),
        ("/v1/sentiment", {"texts": ["x" * 60] * 8, "pad": "y" * 4000}, 413, "body", "4096"),
        ("/v1/nothing", {"texts": ["a"]}, 404, "path", "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(client, route, body, status, field, message):
    if isinstance(body, bytes):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and message in error["message"], error


def test_a_streamed_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: the server counts what arrives

    r = client.post("/v1/sentiment", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_body_is_json_whatever_its_content_type(client):
    body = json.dumps({"texts": ["a good film"]})  # as `curl -d` sends it
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/v1/sentiment", content=body, headers=form).status_code == 200


def test_wrong_method_is_a_json_error(client):
    r = client.get("/v1/sentiment")
    assert r.status_code == 405 and "error" in r.json()


def test_concurrent_requests_are_batched_and_answer_as_sequential_ones(predictor):
    app = create_app(predictor, LIMITS)
    texts = [f"{w} film" for w in ("good", "bad", "great", "dog", "cat", "not", "the", "a")]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            together = await asyncio.gather(
                *(c.post("/v1/sentiment", json={"texts": [t]}) for t in texts)
            )
            alone = [await c.post("/v1/sentiment", json={"texts": [t]}) for t in texts]
            metrics = (await c.get("/metrics")).text
        return together, alone, metrics

    together, alone, metrics = asyncio.run(go())
    assert [r.json() for r in together] == [r.json() for r in alone]
    sizes = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("minbert_batch_size_")
    }
    # 16 requests in fewer than 16 forward passes: some of the concurrent ones were merged
    assert sizes['minbert_batch_size_count{task="sst"}'] < 16
    assert sizes['minbert_batch_size_sum{task="sst"}'] == 16


def test_the_server_answers_health_over_a_real_socket(finished_tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "minbert.cli", "serve", str(finished_tiny_run)]
    server = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(["texts", "pairs", "inputs", "task", "normalize"])


@settings(max_examples=80, deadline=None)
@given(
    route=st.sampled_from(["/v1/sentiment", "/v1/paraphrase", "/v1/embed", "/embed", "/predict"]),
    body=JSON | st.dictionaries(FIELDS, JSON, max_size=3),
)
def test_no_request_body_is_a_server_error(client, route, body):
    r = client.post(route, json=body)
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "error" in r.json()


def test_the_onnx_backend_serves_the_same_answers(finished_tiny_run, tmp_path, client):
    from minbert.onnx.export import export_onnx
    from minbert.onnx.predictor import OnnxPredictor

    backend = OnnxPredictor.from_dir(export_onnx(finished_tiny_run, tmp_path / "onnx"))
    with TestClient(create_app(backend, LIMITS)) as onnx:
        for route, body in [
            ("/v1/sentiment", {"texts": TEXTS}),
            ("/v1/paraphrase", {"pairs": PAIRS}),
            ("/v1/similarity", {"pairs": PAIRS}),
        ]:
            a, b = client.post(route, json=body).json(), onnx.post(route, json=body).json()
            assert a["task"] == b["task"]
            for x, y in zip(a["results"], b["results"], strict=True):
                assert x.keys() == y.keys()
                for key in x:
                    if isinstance(x[key], str | bool | int):  # names, decisions, classes
                        assert x[key] == y[key]
                    else:
                        np.testing.assert_allclose(x[key], y[key], atol=1e-4)
        vectors = onnx.post("/v1/embed", json={"texts": TEXTS}).json()["embeddings"]
        np.testing.assert_allclose(
            vectors, client.post("/v1/embed", json={"texts": TEXTS}).json()["embeddings"], atol=1e-4
        )
        assert onnx.get("/info").json()["backend"] == "onnx"


@pytest.mark.parametrize(
    ("options", "backend", "max_batch"),
    [
        ([], "torch", ServeSettings.max_batch),
        ([], "onnx", 1),  # merging slows ONNX Runtime down on a CPU (PERFORMANCE.md)
        (["--max-batch", "8"], "onnx", 8),
        (["--max-batch", "8", "--no-batching"], "torch", 1),
    ],
)
def test_batching_defaults_to_the_backends_best(options, backend, max_batch):
    from minbert.cli import build_parser, serve_settings

    args = build_parser().parse_args(["serve", "RUN", "--backend", backend, *options])
    assert serve_settings(args).max_batch == max_batch


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-batch", "0", "must be at least 1, got 0"),
        ("--max-items", "-3", "must be at least 1, got -3"),
        ("--pad-multiple", "0", "must be at least 1, got 0"),
        ("--max-body-bytes", "1e6", "expected a whole number, got '1e6'"),
        ("--max-wait-ms", "-1", "must be 0 or more, got -1"),
        ("--max-wait-ms", "nan", "must be 0 or more, got nan"),
        ("--threads", "-2", "must be 0 or more, got -2"),
    ],
)
def test_bad_serve_options_are_refused_by_name(option, value, message, capsys):
    from minbert.cli import main

    with pytest.raises(SystemExit) as exit:  # argparse's way out
        main(["serve", "RUN", option, value])
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: argument {option}: {message}"
