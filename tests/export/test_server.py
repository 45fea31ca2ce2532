"""`tflm serve` speaks TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest)."""

import http.client
import json
import random
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import ROOT
from tflm.export import Server, saved_model


@pytest.fixture(scope="module")
def exports(gpt, classifier, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    saved_model(gpt, base / "shakespeare", max_new_tokens=8, warmup_batch_size=1)
    saved_model(classifier, base / "sentiment")
    return base


def start(base_path, name, **limits):
    server = Server(base_path, name, port=0, host="127.0.0.1", **limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def sentiment(exports):
    server = start(exports / "sentiment", "sentiment", max_body_bytes=4096, max_batch_size=8)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def shakespeare(exports):
    server = start(exports / "shakespeare", "shakespeare")
    yield server
    server.shutdown()


def request(server, method, path, body=None, raw=None):
    """(status, JSON answer) from `server` (a Server or a port)."""
    connection = http.client.HTTPConnection("127.0.0.1", getattr(server, "port", server), timeout=120)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload)


def test_status_and_metadata(sentiment, shakespeare):
    status, answer = request(sentiment, "GET", "/v1/models/sentiment")
    assert status == 200
    assert answer == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, answer = request(shakespeare, "GET", "/v1/models/shakespeare/versions/1/metadata")
    assert status == 200 and answer["model_spec"] == {"name": "shakespeare", "signature_name": "", "version": "1"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "generate", "logits"}
    assert signatures["generate"]["inputs"]["top_p"]["dtype"] == "DT_FLOAT"
    assert signatures["generate"]["inputs"]["prompts"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures["logits"]["outputs"]["logits"]["dtype"] == "DT_FLOAT"


def test_row_and_columnar_predictions_equal_the_signatures(sentiment, shakespeare, exports):
    texts = ["a good movie", "bad and dull"]
    direct = tf.saved_model.load(str(exports / "sentiment" / "1")).signatures["classify"](texts=tf.constant(texts))
    status, rows = request(sentiment, "POST", "/v1/models/sentiment:predict",
                           {"signature_name": "classify", "instances": texts})
    assert status == 200
    for i, row in enumerate(rows["predictions"]):
        assert row["labels"] == direct["labels"].numpy()[i].decode()
        np.testing.assert_allclose(row["probabilities"], direct["probabilities"].numpy()[i], atol=1e-6)
    status, columns = request(sentiment, "POST", "/v1/models/sentiment/versions/1:predict",
                              {"inputs": {"texts": texts}})
    assert status == 200
    np.testing.assert_allclose(columns["outputs"]["probabilities"], direct["probabilities"].numpy(), atol=1e-6)

    gpt_export = tf.saved_model.load(str(exports / "shakespeare" / "1"))
    instances = [{"prompts": p, "max_new_tokens": 6, "temperature": 0.8, "top_k": 5, "top_p": 1.0,
                  "seed": 3} for p in ("ROMEO:", "JULIET:")]
    status, answer = request(shakespeare, "POST", "/v1/models/shakespeare:predict",
                             {"signature_name": "generate", "instances": instances})
    assert status == 200
    expected = gpt_export.signatures["generate"](
        prompts=tf.constant(["ROMEO:", "JULIET:"]), max_new_tokens=tf.constant([6, 6]),
        temperature=tf.constant([0.8, 0.8]), top_k=tf.constant([5, 5]), top_p=tf.constant([1.0, 1.0]),
        seed=tf.constant([3, 3]))["completions"].numpy()
    assert answer == {"predictions": [t.decode() for t in expected]}
    status, answer = request(shakespeare, "POST", "/v1/models/shakespeare:predict",
                             {"inputs": ["ROMEO:"]})  # serving_default, a bare single input
    assert status == 200 and len(answer["outputs"]) == 1 and len(answer["outputs"][0]) > 0


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/models/sentiment:predict", {"signature_name": "nope", "instances": ["a"]}, 400, "nope\" not found"),
    ("/v1/models/sentiment:predict", {"instances": [1, 2]}, 400, "takes strings"),
    ("/v1/models/sentiment:predict", {"instances": [["a"], ["b"]]}, 400, "rank 1"),
    ("/v1/models/sentiment:predict", {"instances": ["a"] * 9}, 400, "at most 8"),
    ("/v1/models/sentiment:predict", {"inputs": ["a"], "instances": ["a"]}, 400, "exactly one"),
    ("/v1/models/other:predict", {"instances": ["a"]}, 404, "not found"),
    ("/v1/models/sentiment/versions/2:predict", {"instances": ["a"]}, 404, "Version 2"),
    ("/v1/models/../../etc/passwd", None, 404, ""),
])
def test_bad_requests_get_tf_serving_errors(sentiment, path, body, status, message):
    got, answer = request(sentiment, "POST" if body is not None else "GET", path, body)
    assert got == status and message in answer["error"]


def test_malformed_json_and_nan_are_400(sentiment):
    assert request(sentiment, "POST", "/v1/models/sentiment:predict", raw=b"{\"instances\": [")[0] == 400
    assert request(sentiment, "POST", "/v1/models/sentiment:predict", raw=b"[NaN]")[0] == 400


def test_a_new_version_is_served_without_a_restart(gpt, exports, tmp_path):
    import shutil

    base = tmp_path / "shakespeare"
    shutil.copytree(exports / "shakespeare" / "1", base / "1")
    server = start(base, "shakespeare")
    try:
        saved_model(gpt, base, max_new_tokens=4, warmup_batch_size=1)  # version 2: shorter completions
        status, answer = request(server, "GET", "/v1/models/shakespeare")
        assert [v["version"] for v in answer["model_version_status"]] == ["2", "1"]
        _, newest = request(server, "POST", "/v1/models/shakespeare:predict", {"instances": ["ROMEO:"]})
        _, first = request(server, "POST", "/v1/models/shakespeare/versions/1:predict", {"instances": ["ROMEO:"]})
        assert len(newest["predictions"][0]) == 4 and len(first["predictions"][0]) == 8
    finally:
        server.shutdown()


def hostile_requests(n, seed=0):
    """Malformed, mistyped, oversized and probing requests: (method, path, raw body)."""
    rng = random.Random(seed)
    paths = ["/v1/models/sentiment:predict", "/v1/models/sentiment/versions/1:predict",
             "/v1/models/../sentiment:predict", "/v1/models/sentiment/versions/..%2F1:predict",
             "/v1/models/%2e%2e/metadata", "/v1/models/sentiment/versions/-1", "/v2/models/x",
             "/v1/models/sentiment/versions/99999999999999999999:predict", "/", "/v1/models/"]
    bodies = [
        b"", b"{", b"null", b"[]", b"\"x\"", b"{\"instances\": []}", b"{\"instances\": null}",
        b"{\"instances\": [NaN]}", b"{\"instances\": [Infinity]}", b"{\"inputs\": {\"texts\": 5}}",
        b"{\"instances\": [[\"a\", [\"b\"]]]}", b"{\"instances\": [{\"b64\": \"%%%\"}]}",
        b"{\"instances\": [true]}", b"{\"instances\": [{\"texts\": \"a\", \"x\": 1}]}",
        b"{\"signature_name\": 5, \"instances\": [\"a\"]}", b"{\"signature_name\": \"logits\", \"instances\": [\"a\"]}",
        b"{\"instances\": [" + b"[" * 5000 + b"]" * 5000 + b"]}", b"\xff\xfe\x00",
        json.dumps({"instances": ["a"] * 1000}).encode(), b"{\"instances\": [\"" + b"a" * 5000 + b"\"]}",
        json.dumps({"inputs": {"texts": [["a", "b"], ["c"]]}}).encode(),
    ]
    for _ in range(n):
        method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE"])
        yield method, rng.choice(paths), rng.choice(bodies)


def test_a_thousand_hostile_requests_get_4xx_json_and_the_server_still_answers(sentiment):
    statuses = []
    for method, path, body in hostile_requests(1000):
        connection = http.client.HTTPConnection("127.0.0.1", sentiment.port, timeout=60)
        connection.request(method, path, body=body)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        statuses.append(response.status)
        assert 400 <= response.status < 500, (method, path, body[:80], response.status, payload[:200])
        assert "error" in json.loads(payload)
    assert len(set(statuses)) >= 3  # not one blanket answer
    status, answer = request(sentiment, "POST", "/v1/models/sentiment:predict", {"instances": ["a good movie"]})
    assert status == 200 and answer["predictions"][0]["labels"] in ("negative", "positive")


def test_concurrent_requests_get_their_own_answers(sentiment):
    texts = ["a good movie", "bad and dull", "good acting", "a plot"]
    expected = {t: request(sentiment, "POST", "/v1/models/sentiment:predict", {"instances": [t]})[1]
                for t in texts}
    answers, errors = [], []

    def client(i):
        try:
            for j in range(5):
                text = texts[(i + j) % len(texts)]
                answers.append((text, request(sentiment, "POST", "/v1/models/sentiment:predict",
                                              {"instances": [text]})[1]))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == 40
    for text, answer in answers:
        assert answer["predictions"][0]["labels"] == expected[text]["predictions"][0]["labels"]
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"],
                                   expected[text]["predictions"][0]["probabilities"], atol=1e-6)


def test_tflm_serve_from_the_shell(exports):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tflm", "serve", "--model_base_path", str(exports / "sentiment"),
         "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "Serving 'sentiment' (versions [1])" in process.stdout.readline()
        status, answer = request(port, "POST", "/v1/models/sentiment:predict", {"instances": ["good"]})
        assert status == 200 and answer["predictions"][0]["labels"] in ("negative", "positive")
    finally:
        process.terminate()
        process.wait(timeout=60)
    missing = subprocess.run([sys.executable, "-m", "tflm", "serve", "--model_base_path", "/nonexistent"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "No model base path" in missing.stderr
