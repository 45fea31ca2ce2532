"""`tflm serve` speaks TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest)
and gRPC API, holds no thread per connection, and enforces its HTTP limits and timeouts."""

import contextlib
import http.client
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.helpers import ROOT
from tflm.export import Server, saved_model

# Short enough for the tests to wait out; the defaults are 10, 30 and 75 s.
TIMEOUTS = {"header_timeout": 3.0, "body_timeout": 1.0, "idle_timeout": 1.0}
PREDICT = "/v1/models/sentiment:predict"


@pytest.fixture(scope="module")
def exports(gpt, classifier, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    saved_model(gpt, base / "shakespeare", max_new_tokens=8, warmup_batch_size=1)
    saved_model(classifier, base / "sentiment", warmup_batch_size=1)
    return base


def start(base_path, name, **options):
    """A started Server on free ports of 127.0.0.1."""
    options = {"host": "127.0.0.1", "rest_api_port": 0, "port": 0, **options}
    server = Server(base_path, name, **options)
    server.start()
    return server


@pytest.fixture(scope="module")
def sentiment(exports):
    server = start(exports / "sentiment", "sentiment", max_body_bytes=4096, max_batch_size=8,
                   monitoring=True, **TIMEOUTS)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def shakespeare(exports):
    server = start(exports / "shakespeare", "shakespeare", port=None)
    yield server
    server.shutdown()


def request(server, method, path, body=None, raw=None):
    """(status, JSON answer) from `server` (a Server or a REST port)."""
    port = getattr(server, "rest_api_port", server)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload)


def connect(server):
    sock = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=60)
    return sock, sock.makefile("rb")


def read_response(stream):
    """(status, headers, body) of the next response on `stream`, or None once it is closed."""
    line = stream.readline()
    if not line:
        return None
    status, headers = int(line.split()[1]), {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, stream.read(int(headers.get("content-length", 0)))


def wait_for(condition, seconds=120):
    """Poll `condition()` until true; False after `seconds` (a limit for a hung server, not a
    figure the test checks)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_status_and_metadata(sentiment, shakespeare):
    status, answer = request(sentiment, "GET", "/v1/models/sentiment")
    assert status == 200
    assert answer == {"model_version_status": [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, answer = request(shakespeare, "GET", "/v1/models/shakespeare/versions/1/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": "shakespeare", "signature_name": "", "version": "1"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "generate", "generate_tokens", "logits"}
    assert signatures["generate"]["inputs"]["top_p"]["dtype"] == "DT_FLOAT"
    prompts = signatures["generate"]["inputs"]["prompts"]
    assert prompts["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures["logits"]["outputs"]["logits"]["dtype"] == "DT_FLOAT"


def test_row_and_columnar_predictions_equal_the_signatures(sentiment, shakespeare, exports):
    texts = ["a good movie", "bad and dull"]
    classify = tf.saved_model.load(str(exports / "sentiment" / "1")).signatures["classify"]
    direct = {key: value.numpy() for key, value in classify(texts=tf.constant(texts)).items()}
    status, rows = request(sentiment, "POST", PREDICT,
                           {"signature_name": "classify", "instances": texts})
    assert status == 200
    for i, row in enumerate(rows["predictions"]):
        assert row["labels"] == direct["labels"][i].decode()
        np.testing.assert_allclose(row["probabilities"], direct["probabilities"][i], atol=1e-6)
    status, columns = request(sentiment, "POST", "/v1/models/sentiment/versions/1:predict",
                              {"inputs": {"texts": texts}})
    assert status == 200
    np.testing.assert_allclose(columns["outputs"]["probabilities"], direct["probabilities"],
                               atol=1e-6)
    b64 = {"instances": [{"b64": "YSBnb29kIG1vdmll"}, "bad and dull"]}  # "a good movie"
    assert request(sentiment, "POST", PREDICT, b64) == (200, rows)

    generate = tf.saved_model.load(str(exports / "shakespeare" / "1")).signatures["generate"]
    instances = [{"prompts": p, "max_new_tokens": 6, "temperature": 0.8, "top_k": 5, "top_p": 1.0,
                  "seed": 3} for p in ("ROMEO:", "JULIET:")]
    status, answer = request(shakespeare, "POST", "/v1/models/shakespeare:predict",
                             {"signature_name": "generate", "instances": instances})
    assert status == 200
    expected = generate(**{key: tf.constant([row[key] for row in instances])
                           for key in instances[0]})
    assert answer == {"predictions": [t.decode() for t in expected["completions"].numpy()]}
    status, answer = request(shakespeare, "POST", "/v1/models/shakespeare:predict",
                             {"inputs": ["ROMEO:"]})  # serving_default, a bare single input
    assert status == 200 and len(answer["outputs"]) == 1 and len(answer["outputs"][0]) > 0
    refused = {"signature_name": "generate", "instances": [dict(instances[0], top_p=0.0)]}
    status, answer = request(shakespeare, "POST", "/v1/models/shakespeare:predict", refused)
    assert status == 400 and answer["error"] == "top_p must be above 0"


STREAM = "/v1/models/shakespeare:generate_stream"


def read_events(stream):
    """[(event name, JSON data)] of a server-sent event stream (a file of bytes), to its end."""
    events = []
    for block in stream.read().decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        if fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_generate_stream_sends_the_completion_piece_by_piece(shakespeare, exports):
    settings = {"max_new_tokens": 30, "temperature": 1.0, "top_k": 0, "top_p": 0.9, "seed": 3}
    connection = http.client.HTTPConnection("127.0.0.1", shakespeare.rest_api_port, timeout=120)
    connection.request("POST", STREAM, body=json.dumps({"prompt": "ROMEO:", **settings}))
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    events = read_events(response)
    connection.close()
    generate = tf.saved_model.load(str(exports / "shakespeare" / "1")).signatures["generate"]
    expected = generate(prompts=tf.constant(["ROMEO:"]),
                        **{key: tf.constant([value]) for key, value in settings.items()})
    pieces = [data["text"] for name, data in events[:-1] if name == "message"]
    assert len(pieces) == len(events) - 1 > 3  # calls of 1, 2, 4, 8, 15 tokens (or smaller)
    assert "".join(pieces) == expected["completions"].numpy()[0].decode()
    assert events[-1] == ("end", {"generated_tokens": 30, "finish_reason": "length"})


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "ROMEO:", "max_new_tokens": 8, "top_p": 0.0}, 400, "top_p must be above 0"),
    ({"prompt": "ROMEO:"}, 400, "below the context of 48"),  # the default, 64
    ({"prompt": "ROMEO:", "top_k": "5"}, 400, "takes numbers"),
    ({"prompt": "ROMEO:", "beams": 2}, 400, "Unknown field 'beams'"),
    ({"prompts": ["ROMEO:"]}, 400, "\"prompt\" string"),
])
def test_a_bad_stream_request_is_a_400_before_any_event(shakespeare, body, status, message):
    got, answer = request(shakespeare, "POST", STREAM, body)
    assert got == status and message in answer["error"]
    assert request(shakespeare, "GET", STREAM)[0] == 405


def test_a_client_that_disconnects_stops_its_stream(shakespeare, monkeypatch, capsys):
    from tflm.export import rest

    calls, run = [], rest.run_signature

    def slow(function, tensors):  # a model slow enough for the client to leave mid-stream
        calls.append(int(tensors["steps"][0]))
        time.sleep(0.3)
        return run(function, tensors)

    monkeypatch.setattr(rest, "run_signature", slow)
    sock, stream = connect(shakespeare)
    body = json.dumps({"prompt": "ROMEO:", "max_new_tokens": 40}).encode()
    sock.sendall(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    while not stream.readline().startswith(b"data:"):  # the first piece
        pass
    stream.close()
    sock.close()
    logged = []

    def stream_logged():  # (earlier tests' lines to this path may come late: not theirs)
        lines = ACCESS.finditer(capsys.readouterr().err)
        logged.extend(m for m in lines if m["path"] == STREAM and m["status"] not in ("400", "405"))
        return logged

    assert wait_for(stream_logged, 30)
    made = len(calls)
    time.sleep(1.0)
    assert len(calls) == made <= 3  # of 40: at 0.3 s a call, each call makes 1 token
    assert logged[0]["status"] == "499" and int(logged[0]["tokens"]) < 40


VERSIONS = "/v1/models/sentiment/versions/"


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", PREDICT, {"signature_name": "nope", "instances": ["a"]}, 400, "nope\" not found"),
    ("POST", PREDICT, {"instances": [1, 2]}, 400, "takes strings"),
    ("POST", PREDICT, {"instances": [["a"], ["b"]]}, 400, "rank 1"),
    ("POST", PREDICT, {"instances": ["a"] * 9}, 400, "at most 8"),
    ("POST", PREDICT, {"inputs": ["a"], "instances": ["a"]}, 400, "exactly one"),
    ("POST", "/v1/models/other:predict", {"instances": ["a"]}, 404, "not found"),
    ("POST", VERSIONS + "2:predict", {"instances": ["a"]}, 404, "Specific(sentiment, 2)"),
    ("GET", "/v1/models/../../etc/passwd", None, 404, ""),
    ("GET", PREDICT, None, 405, "POST"),
    ("DELETE", "/v1/models/sentiment", None, 405, "Method Not Allowed"),
    # Versions that int() refuses or that name no version: 404, not a 500
    ("GET", VERSIONS + "%C2%B2", None, 404, "not found"),
    ("POST", VERSIONS + "%C2%B2:predict", {"instances": ["a"]}, 404, "not found"),
    ("GET", VERSIONS + "9" * 5000, None, 404, "not found"),
    ("POST", VERSIONS + "9" * 5000 + ":predict", {"instances": ["a"]}, 404, "not found"),
])
def test_bad_requests_get_tf_serving_errors(sentiment, method, path, body, status, message):
    got, answer = request(sentiment, method, path, body)
    assert got == status and message in answer["error"]


def test_a_version_in_raw_bytes_is_a_4xx(sentiment):
    sock, stream = connect(sentiment)
    with sock, stream:  # \xb2: "²" in Latin-1, a digit to str.isdigit()
        sock.sendall(b"GET /v1/models/sentiment/versions/\xb2 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(stream)
    assert 400 <= status < 500 and "error" in json.loads(body)


def test_malformed_json_and_nan_are_400(sentiment):
    assert request(sentiment, "POST", PREDICT, raw=b"{\"instances\": [")[0] == 400
    assert request(sentiment, "POST", PREDICT, raw=b"[NaN]")[0] == 400


def test_a_new_version_is_served_without_a_restart(gpt, exports, tmp_path):
    base = tmp_path / "shakespeare"
    shutil.copytree(exports / "shakespeare" / "1", base / "1")
    server = start(base, "shakespeare", port=None, file_system_poll_wait_seconds=0.1,
                   model_version_policy="all")
    try:
        saved_model(gpt, base, max_new_tokens=4, warmup_batch_size=1)  # 2: shorter completions
        assert wait_for(lambda: server.versions.available() == [1, 2])
        status, answer = request(server, "GET", "/v1/models/shakespeare")
        assert [v["version"] for v in answer["model_version_status"]] == ["2", "1"]
        body = {"instances": ["ROMEO:"]}
        _, newest = request(server, "POST", "/v1/models/shakespeare:predict", body)
        _, first = request(server, "POST", "/v1/models/shakespeare/versions/1:predict", body)
        assert len(newest["predictions"][0]) == 4 and len(first["predictions"][0]) == 8
    finally:
        server.shutdown()


def hostile_requests(n, seed=0):
    """Malformed, mistyped, oversized and probing requests: (method, path, raw body)."""
    rng = random.Random(seed)
    paths = [PREDICT, VERSIONS + "1:predict", "/v1/models/../sentiment:predict",
             VERSIONS + "..%2F1:predict", "/v1/models/%2e%2e/metadata", VERSIONS + "-1",
             "/v2/models/x", VERSIONS + "99999999999999999999:predict", "/", "/v1/models/",
             VERSIONS + "%C2%B2:predict", "/monitoring/prometheus/metrics/x"]
    bodies = [
        b"", b"{", b"null", b"[]", b"\"x\"", b"{\"instances\": []}", b"{\"instances\": null}",
        b"{\"instances\": [NaN]}", b"{\"instances\": [Infinity]}", b"{\"inputs\": {\"texts\": 5}}",
        b"{\"instances\": [[\"a\", [\"b\"]]]}", b"{\"instances\": [{\"b64\": \"%%%\"}]}",
        b"{\"instances\": [true]}", b"{\"instances\": [{\"texts\": \"a\", \"x\": 1}]}",
        b"{\"signature_name\": 5, \"instances\": [\"a\"]}",
        b"{\"signature_name\": \"logits\", \"instances\": [\"a\"]}",
        b"{\"instances\": [" + b"[" * 5000 + b"]" * 5000 + b"]}", b"\xff\xfe\x00",
        json.dumps({"instances": ["a"] * 1000}).encode(),
        b"{\"instances\": [\"" + b"a" * 5000 + b"\"]}",
        json.dumps({"inputs": {"texts": [["a", "b"], ["c"]]}}).encode(),
    ]
    for _ in range(n):
        method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE"])
        yield method, rng.choice(paths), rng.choice(bodies)


def test_a_thousand_hostile_requests_get_4xx_json_and_the_server_still_answers(sentiment):
    statuses = []
    for method, path, body in hostile_requests(1000):
        connection = http.client.HTTPConnection("127.0.0.1", sentiment.rest_api_port, timeout=60)
        connection.request(method, path, body=body)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        statuses.append(response.status)
        assert 400 <= response.status < 500, (method, path, body[:80], response.status,
                                              payload[:200])
        assert "error" in json.loads(payload)
    assert len(set(statuses)) >= 4  # not one blanket answer (400, 404, 405, 413)
    status, answer = request(sentiment, "POST", PREDICT, {"instances": ["a good movie"]})
    assert status == 200 and answer["predictions"][0]["labels"] in ("negative", "positive")


def test_concurrent_requests_get_their_own_answers(sentiment):
    texts = ["a good movie", "bad and dull", "good acting", "a plot"]
    expected = {t: request(sentiment, "POST", PREDICT, {"instances": [t]})[1] for t in texts}
    answers, errors = [], []

    def client(i):
        try:
            for j in range(5):
                text = texts[(i + j) % len(texts)]
                _, answer = request(sentiment, "POST", PREDICT, {"instances": [text]})
                answers.append((text, answer))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == 40
    for text, answer in answers:
        got, want = answer["predictions"][0], expected[text]["predictions"][0]
        assert got["labels"] == want["labels"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)


# -- HTTP/1.1 on raw sockets ------------------------------------------------------------------

def test_connections_with_unfinished_headers_hold_no_thread_and_are_closed(sentiment):
    before = threading.active_count()
    connections = [connect(sentiment) for _ in range(200)]
    try:
        for sock, _ in connections:
            sock.sendall(b"GET /v1/models/sentiment HTTP/1.1\r\nHost: loc")  # and nothing more
        assert threading.active_count() < before + 10  # a thread per connection would be 200
        for _, stream in connections:
            assert stream.read() == b""  # closed by the server after the header timeout
    finally:
        for sock, stream in connections:
            stream.close()
            sock.close()
    sock, stream = connect(sentiment)  # connected and silent: closed too
    with sock, stream:
        assert stream.read() == b""


def test_idle_keep_alive_connections_are_closed(sentiment):
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(b"GET /v1/models/sentiment HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(stream)[0] == 200
        assert read_response(stream) is None  # kept alive, then closed once idle


def test_answers_are_sent_without_waiting_for_acknowledgements(sentiment):
    # Without TCP_NODELAY a keep-alive connection's answers wait ~40 ms for the client's
    # delayed ACK (Nagle's algorithm): every accepted socket must have it.
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(b"GET /v1/models/sentiment HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(stream)[0] == 200
        connections = list(sentiment._rest.server_state.connections)
        assert connections
        for protocol in connections:
            accepted = protocol.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_get_body_is_not_a_request_and_pipelined_requests_are_answered_in_order(sentiment):
    smuggled = b"GET /v1/models/other HTTP/1.1\r\nHost: x\r\n\r\n"
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(b"GET /v1/models/sentiment HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(smuggled), smuggled)
                     + b"GET /v1/models/sentiment/metadata HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
        responses = []
        while (response := read_response(stream)) is not None:
            responses.append(response)
    assert [status for status, _, _ in responses] == [200, 200]
    assert "model_version_status" in json.loads(responses[0][2])
    assert "metadata" in json.loads(responses[1][2])


def chunked(body, size=7):
    """`body` in HTTP/1.1 chunks of `size` bytes, with the last, empty chunk."""
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


POST_HEADERS = b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\n"


def test_a_chunked_body_is_read(sentiment):
    body = json.dumps({"instances": ["a good movie"]}).encode()
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(POST_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body))
        status, _, answer = read_response(stream)
    expected = request(sentiment, "POST", PREDICT, raw=body)
    assert (status, json.loads(answer)) == expected and status == 200


@pytest.mark.parametrize("length", [b"2_0", b"-1", b"abc", b"20, 21", b"0x14"])
def test_a_bad_content_length_is_a_400_that_closes_the_connection(sentiment, length):
    sock, stream = connect(sentiment)
    with sock, stream:
        body = b"{\"instances\": [\"a\"]}GET /v1/models/sentiment HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(POST_HEADERS + b"Content-Length: " + length + b"\r\n\r\n" + body)
        status, headers, body = read_response(stream)
        assert status == 400 and headers["connection"] == "close" and "error" in json.loads(body)
        assert read_response(stream) is None  # the rest is not read as requests


def test_both_content_length_and_chunked_is_refused(sentiment):
    body = json.dumps({"instances": ["a"]}).encode()
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(POST_HEADERS + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunked(body))
        assert read_response(stream)[0] == 400


def test_bodies_over_the_limit_are_413_and_close_the_connection(sentiment):
    sock, stream = connect(sentiment)  # a declared length is refused before the body is sent
    with sock, stream:
        sock.sendall(POST_HEADERS + b"Content-Length: 4097\r\n\r\n")
        status, headers, body = read_response(stream)
        assert status == 413 and headers["connection"] == "close"
        assert "4096 bytes" in json.loads(body)["error"]
        assert read_response(stream) is None
    sock, stream = connect(sentiment)  # a chunked body is counted as it arrives, never finished
    with sock, stream:
        sock.sendall(POST_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):  # 5 KiB in all; the last chunk never comes
            sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        status, headers, _ = read_response(stream)
        assert status == 413 and headers["connection"] == "close"


def test_a_body_that_stops_arriving_is_a_408(sentiment):
    sock, stream = connect(sentiment)
    with sock, stream:
        sock.sendall(POST_HEADERS + b"Content-Length: 100\r\n\r\n{\"in")
        status, headers, body = read_response(stream)
        assert status == 408 and headers["connection"] == "close" and "error" in json.loads(body)
        assert read_response(stream) is None


# -- limits, deadline, logs, metrics, gRPC ----------------------------------------------------

@pytest.fixture(scope="module")
def limited(exports):
    server = start(exports / "sentiment", "sentiment", port=None, max_connections=2,
                   rest_api_timeout_in_ms=300)
    yield server
    server.shutdown()


def test_connections_over_the_limit_get_503(limited):
    first, second = connect(limited), connect(limited)
    try:
        assert wait_for(lambda: len(limited._rest.server_state.connections) == 2)
        assert request(limited, "GET", "/v1/models/sentiment") == (
            503, {"error": "More than 2 connections are open."})
    finally:
        for sock, stream in (first, second):
            stream.close()
            sock.close()
    assert wait_for(lambda: not limited._rest.server_state.connections)
    assert request(limited, "GET", "/v1/models/sentiment")[0] == 200


def test_a_prediction_past_the_deadline_is_a_504(limited, monkeypatch):
    release, predict = threading.Event(), limited.predictor.predict

    def slow(*args, **kwargs):
        release.wait()
        return predict(*args, **kwargs)

    monkeypatch.setattr(limited.predictor, "predict", slow)
    try:
        status, answer = request(limited, "POST", PREDICT, {"instances": ["a"]})
    finally:
        release.set()
    assert status == 504 and "Deadline exceeded" in answer["error"]


ACCESS = re.compile(r"access time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z client=127\.0\.0\.1 "
                    r"method=(?P<method>\S+) path=(?P<path>\S+) status=(?P<status>\d+) "
                    r"ms=\d+\.\d batch=(?P<batch>\S+)(?: tokens=(?P<tokens>\d+))?")


def test_one_access_log_line_per_request(sentiment, capsys):
    request(sentiment, "POST", VERSIONS + "1:predict", {"instances": ["a", "b", "c"]})
    request(sentiment, "GET", VERSIONS + "7")
    paths = {VERSIONS + "1:predict", VERSIONS + "7"}
    logged = []

    def both_logged():  # the lines of these requests (earlier tests' may come late)
        lines = ACCESS.finditer(capsys.readouterr().err)
        logged.extend(m.groupdict() for m in lines if m["path"] in paths)
        return len(logged) >= 2

    assert wait_for(both_logged, 30)
    assert logged == [
        {"method": "POST", "path": VERSIONS + "1:predict", "status": "200", "batch": "3", "tokens": None},
        {"method": "GET", "path": VERSIONS + "7", "status": "404", "batch": "-", "tokens": None}]


def metrics(port):
    """{(sample name, sorted labels): value} from the server's Prometheus endpoint."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/monitoring/prometheus/metrics")
    response = connection.getresponse()
    assert response.status == 200
    samples = {}
    for family in text_string_to_metric_families(response.read().decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_prometheus_metrics(sentiment, shakespeare):
    ok = ("tflm_requests_total", (("api", "rest"), ("signature", "classify"), ("status", "200")))
    refused = ("tflm_requests_total", (("api", "rest"), ("signature", "classify"), ("status", "400")))
    latency = ("tflm_request_latency_seconds_count", (("api", "rest"), ("signature", "classify")))
    grpc_ok = ("tflm_requests_total", (("api", "grpc"), ("signature", "classify"), ("status", "OK")))
    grpc_refused = ("tflm_requests_total",
                    (("api", "grpc"), ("signature", "classify"), ("status", "INVALID_ARGUMENT")))
    batches_of_4 = ("tflm_batch_size_bucket", (("le", "4.0"),))
    before = metrics(sentiment.rest_api_port)
    for texts in (["a"], ["a", "b", "c"], ["a"] * 5):
        request(sentiment, "POST", PREDICT, {"signature_name": "classify", "instances": texts})
    request(sentiment, "POST", PREDICT, {"signature_name": "classify", "instances": [1]})  # 400
    with grpc.insecure_channel(f"127.0.0.1:{sentiment.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for texts in (["a", "b"], [1.0]):  # the second is refused
            call = predict_pb2.PredictRequest()
            call.model_spec.name, call.model_spec.signature_name = "sentiment", "classify"
            call.inputs["texts"].CopyFrom(tf.make_tensor_proto(texts))
            with contextlib.suppress(grpc.RpcError):
                stub.Predict(call, timeout=60)
    after = metrics(sentiment.rest_api_port)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[refused] - before.get(refused, 0) == 1
    assert after[latency] - before.get(latency, 0) == 4
    assert after[grpc_ok] - before.get(grpc_ok, 0) == 1
    assert after[grpc_refused] - before.get(grpc_refused, 0) == 1
    assert after[batches_of_4] - before.get(batches_of_4, 0) == 3  # 1, 3 and 2 rows; not 5
    assert after["tflm_model_versions", (("state", "AVAILABLE"), ("version", "1"))] == 1
    assert request(shakespeare, "GET", "/monitoring/prometheus/metrics")[0] == 404  # off


def test_grpc_predict_and_status_answer_as_rest(sentiment):
    texts = ["a good movie", "bad and dull"]
    channel = grpc.insecure_channel(f"127.0.0.1:{sentiment.port}")
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "sentiment"
    predict.model_spec.signature_name = "classify"
    predict.inputs["texts"].CopyFrom(tf.make_tensor_proto(texts))
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict, timeout=60)
    _, rest = request(sentiment, "POST", PREDICT, {"inputs": texts})
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"]),
                               rest["outputs"]["probabilities"], atol=1e-6)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "sentiment"
    versions = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=60)
    assert [(v.version, v.state) for v in versions.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    channel.close()


# -- the command ---------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tflm_serve_finishes_requests_under_way_on_sigterm(exports, tmp_path):
    (tmp_path / "batching.txt").write_text(  # a request waits 4 s in the queue for others
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 4000000 }\n"
        "num_batch_threads { value: 1 }\n")
    port, grpc_port = free_port(), free_port()
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "tflm", "serve", "--model_base_path", str(exports / "sentiment"),
         "--rest_api_port", str(port), "--port", str(grpc_port), "--host", "127.0.0.1",
         "--enable_batching", "--batching_parameters_file", str(tmp_path / "batching.txt"),
         "--monitoring=true"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = process.stdout.readline()
        assert "Serving 'sentiment' (versions [1])" in line
        assert f"gRPC at 127.0.0.1:{grpc_port}" in line
        answers = []
        under_way = threading.Thread(target=lambda: answers.append(
            request(port, "POST", PREDICT, {"instances": ["good"]})))
        under_way.start()
        assert wait_for(lambda: metrics(port).get(("tflm_batch_queue_depth", ())) == 1)
        process.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return False
            except ConnectionRefusedError:
                return True

        assert wait_for(refused)
        assert under_way.is_alive()  # waiting for its batch while new connections are refused
        under_way.join()
        status, answer = answers[0]
        assert status == 200 and answer["predictions"][0]["labels"] in ("negative", "positive")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
    stderr.seek(0)
    logged = [m.groupdict() for m in ACCESS.finditer(stderr.read())]
    assert {"method": "POST", "path": PREDICT, "status": "200", "batch": "1", "tokens": None} in logged


def test_tflm_serve_refuses_a_missing_path_and_a_bad_policy(tmp_path):
    serve = [sys.executable, "-m", "tflm", "serve"]
    missing = subprocess.run(serve + ["--model_base_path", "/nonexistent", "--port", "9000"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "No model base path" in missing.stderr
    assert "--port 9000 is the gRPC port" in missing.stderr  # the note for --port alone
    bad_policy = subprocess.run(serve + ["--model_base_path", str(tmp_path),
                                         "--model_version_policy", "newest"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad_policy.returncode == 2 and "specific:1,3" in bad_policy.stderr
