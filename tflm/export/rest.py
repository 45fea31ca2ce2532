"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) as an ASGI app.

    GET  /v1/models/NAME[/versions/N]            version status
    GET  /v1/models/NAME[/versions/N]/metadata   the signatures, as TF Serving lists them
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name": ..., "instances": [...]}
                                                 or {"signature_name": ..., "inputs": ...}
    POST /v1/models/NAME[/versions/N]:generate_stream
                                                 {"prompt": ..., "max_new_tokens": ..., ...}:
                                                 server-sent events (beyond TF Serving)
    GET  /monitoring/prometheus/metrics          Prometheus metrics (when monitoring is on)

The row format ("instances") answers {"predictions": ...}, the columnar one ("inputs")
{"outputs": ...}; errors are {"error": "..."} with TF Serving's HTTP statuses (400 a bad
request, 404 an unknown model or version, 504 past the request deadline).

Starlette on uvicorn rather than aiohttp: uvicorn's HTTP/1.1 is h11, a strict parser
(chunked bodies, pipelining, Content-Length of digits only), it counts connections and
shuts down gracefully, and an ASGI app keeps request handling apart from connection
handling, whose one gap (no deadline for a request's headers) `Protocol` fills.

```python
versions = ModelVersions("saved_models/sentiment")
versions.start()
versions.wait_until_ready()
api = RestApi("sentiment", versions, Predictor(versions), executor=ThreadPoolExecutor(8))
uvicorn.run(api, port=8501, http=functools.partial(Protocol, header_timeout=10.0))
```

`tflm.export.Server` does this, with gRPC, batching, metrics and a graceful shutdown.
"""

import asyncio
import codecs
import json
import re
import socket
import sys
import time

import h11
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tensorflow.core.framework import types_pb2
from uvicorn.protocols.http.h11_impl import H11Protocol

from tflm.export.predict import (RequestError, parse_json, run_signature, signature_specs, to_json,
                                 to_numpy)

_ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|(?P<predict>:predict)|(?P<stream>:generate_stream))?/?"
)
# A stream's settings and their defaults: those of the generate signature (greedy).
STREAM_SETTINGS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
# Tokens a stream's call: 1 first (the first piece comes soon), then twice as many each
# call, up to what takes about STREAM_CALL_SECONDS at the speed measured so far: few calls
# for a fast model (each call has a fixed cost), steady pieces for a slow one.
STREAM_CALL_SECONDS, MAX_STREAM_STEPS = 0.1, 64
_CLOSE = {"Connection": "close"}


class RestApi:
    """The REST API for the model `name`, an ASGI app for uvicorn.

    Predictions run on `executor` (TensorFlow calls block), each within `request_timeout`
    seconds (TF Serving's --rest_api_timeout_in_ms) or answered 504. Request bodies over
    `max_body_bytes` are refused with 413 (a chunked body as it arrives), bodies slower
    than `body_timeout` seconds with 408. While `connections()` exceeds
    `max_connections`, requests are answered 503. Each request writes one access-log
    line to stderr when `access_log` is on, and counts in `metrics` if given.
    """

    def __init__(self, name, versions, predictor, *, executor, max_body_bytes=1 << 20,
                 request_timeout=30.0, body_timeout=30.0, max_connections=1000,
                 connections=lambda: 0, metrics=None, access_log=True):
        self.name, self.versions, self.predictor = name, versions, predictor
        self.executor = executor
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.connections = connections
        self.metrics = metrics
        self.access_log = access_log
        routes = [Route("/v1/models/{path:path}", self.models, methods=["GET", "POST"])]
        if metrics is not None:
            routes.append(Route("/monitoring/prometheus/metrics", self.prometheus, methods=["GET"]))
        self.app = Starlette(routes=routes, exception_handlers={
            RequestError: _request_error, HTTPException: _http_error, Exception: _server_error})

    async def __call__(self, scope, receive, send):
        """Starlette's app behind the connection limit, timed and logged."""
        if scope["type"] != "http":  # lifespan events (uvicorn's lifespan is off)
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500
        state = scope.setdefault("state", {})

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.connections() > self.max_connections:
                error = RequestError(f"More than {self.max_connections} connections are open.", 503)
                await _error(error)(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - began
            status = 499 if state.get("disconnected") else status  # nginx's "client closed"
            if self.access_log:
                path = scope.get("raw_path") or scope["path"].encode()
                log_access(scope.get("client"), scope["method"], path.decode("latin-1"), status,
                           seconds, state.get("batch"), state.get("tokens"))
            if self.metrics is not None:
                self.metrics.request("rest", state.get("signature", ""), status, seconds)

    # -- the routes -----------------------------------------------------------------------

    async def models(self, request):
        body = await self._body(request)
        method, path = request.method, request.scope["path"]
        match = _ROUTE.fullmatch(path)
        if match is None:
            raise RequestError(f"Malformed request: {method} {path[:200]}", 404)
        if match["name"] != self.name:
            raise RequestError(
                f"Servable not found for request: Latest({match['name'][:100]})", 404)
        version = match["version"]
        if match["predict"]:
            if method != "POST":
                raise RequestError("Use POST for :predict.", 405)
            state = request.scope["state"]
            # Writing large outputs (logits) as JSON is slow too: on the worker thread
            text = await self._run(lambda: json.dumps(self.predict(version, body, state)))
            return Response(text, 200, media_type="application/json")
        if match["stream"]:
            if method != "POST":
                raise RequestError("Use POST for :generate_stream.", 405)
            return await self.stream(version, body, request.scope["state"])
        if method != "GET":
            raise RequestError(f"Use GET for {path[:200]}.", 405)
        if match["metadata"]:
            return _json(200, self.metadata(version))
        return _json(200, {"model_version_status": self.versions.status(version)})

    async def prometheus(self, request):
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- the API ----------------------------------------------------------------------------

    def predict(self, version, body, state):
        """The JSON answer to a :predict body (run on a worker thread)."""
        request = parse_json(body)
        if not isinstance(request, dict):
            raise RequestError("The request must be a JSON object.")
        name = request.get("signature_name", "serving_default")
        number, model = self.versions.get(version)
        specs = signature_specs(model)
        if not isinstance(name, str) or name not in specs:
            raise RequestError(
                f"Serving signature name: \"{str(name)[:100]}\" not found in signature def")
        state["signature"] = name
        inputs = specs[name][0]
        if ("instances" in request) == ("inputs" in request):
            raise RequestError("The request must have exactly one of \"instances\" or \"inputs\".")
        row_format = "instances" in request
        if row_format:
            columns = _columns(request["instances"], inputs)
        else:
            columns = _named(request["inputs"], inputs)
        arrays = {key: to_numpy(columns[key], spec, key) for key, spec in inputs.items()}
        batches = [len(a) for a in arrays.values() if a.ndim]
        state["batch"] = batches[0] if batches else 1
        # The version resolved above: the inputs were read with its signature.
        _, outputs = self.predictor.predict(name, arrays, number)
        if self.metrics is not None and not self.metrics.batching:  # else the Batcher reports
            self.metrics.batch_size.observe(state["batch"])
        outputs = {key: to_json(value) for key, value in outputs.items()}
        if row_format:
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values()))}
            rows = len(next(iter(outputs.values())))
            return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(rows)]}
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

    async def stream(self, version, body, state):
        """A generation as server-sent events, run through the `generate_tokens` signature a
        few tokens a call, so that the client dropping the connection stops it:

            data: {"text": "piece"}                                (as many as come)
            event: end
            data: {"generated_tokens": 12, "finish_reason": "stop"}  ("length" at max_new_tokens)

        A request the model refuses is a 400 before the stream starts; an error after it
        is an `event: error` with {"error": ...}. Streams are not batched."""
        request = parse_json(body)
        if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
            raise RequestError("A stream request is a JSON object with a \"prompt\" string.")
        unknown = sorted(set(request) - {"prompt", *STREAM_SETTINGS})
        if unknown:
            raise RequestError(f"Unknown field {unknown[0][:100]!r}; a stream request takes "
                               f"\"prompt\" and {sorted(STREAM_SETTINGS)}.")
        _, model = self.versions.get(version)
        if "generate_tokens" not in model.signatures:
            raise RequestError("This model cannot stream: it has no generate_tokens signature "
                               "(export it again with this version of tflm).")
        function = model.signatures["generate_tokens"]
        state["signature"], state["batch"], state["tokens"] = "generate_tokens", 1, 0
        specs = function.structured_input_signature[1]
        inputs = {key: to_numpy([request.get(key, default)], specs[key], key)
                  for key, default in STREAM_SETTINGS.items()}
        inputs["prompts"] = to_numpy([request["prompt"]], specs["prompts"], "prompt")
        budget, generated = int(inputs["max_new_tokens"][0]), []

        def step(steps):
            """(bytes of the next `steps` tokens at most, done, seconds a token took)."""
            began = time.perf_counter()
            steps = min(steps, max(budget - len(generated), 1))
            token_ids = np.array([generated], np.int32).reshape(1, len(generated))
            outputs = run_signature(function, {**inputs, "token_ids": token_ids,
                                               "steps": np.array([steps], np.int32)})
            generated.extend(t for t in outputs["token_ids"][0].tolist() if t >= 0)
            state["tokens"] = len(generated)
            return outputs["text"][0], bool(outputs["done"][0]), (time.perf_counter() - began) / steps

        first = await self._run(lambda: step(1))  # a bad setting is still a plain 400

        async def events():
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            (piece, done, seconds), steps = first, 1
            try:
                while True:
                    text = decoder.decode(piece, final=done)
                    if text:
                        yield _event({"text": text})
                    if done:
                        break
                    steps = max(1, min(2 * steps, MAX_STREAM_STEPS, int(STREAM_CALL_SECONDS / seconds)))
                    piece, done, seconds = await self._run(lambda: step(steps))
                reason = "length" if len(generated) >= budget else "stop"
                yield _event({"generated_tokens": len(generated), "finish_reason": reason}, "end")
            except RequestError as error:
                yield _event({"error": str(error)}, "error")
            except asyncio.CancelledError:  # the client went away: no more calls
                state["disconnected"] = True
                raise

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def metadata(self, version):
        number, model = self.versions.get(version)
        signatures = {}
        for key, (inputs, outputs) in signature_specs(model).items():
            signatures[key] = {
                "inputs": {name: _tensor_info(spec) for name, spec in inputs.items()},
                "outputs": {name: _tensor_info(spec) for name, spec in outputs.items()},
                "method_name": "tensorflow/serving/predict",
            }
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(number)},
                "metadata": {"signature_def": {"signature_def": signatures}}}

    # -- reading and running ------------------------------------------------------------

    async def _body(self, request):
        """The request body, within the size limit and the body timeout."""
        headers = request.headers
        if "content-length" in headers and "transfer-encoding" in headers:
            # Proxies may frame such a request differently (request smuggling): refuse it
            raise RequestError("A request may not have both Content-Length and Transfer-Encoding.")
        too_large = RequestError(f"The request body exceeds {self.max_body_bytes} bytes.", 413)
        if int(headers.get("content-length", 0)) > self.max_body_bytes:  # h11 checked: digits
            raise too_large

        async def read():
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:  # a chunked body has no length to check first
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.body_timeout)
        except asyncio.TimeoutError:
            message = f"The request body took more than {self.body_timeout:g} s."
            raise RequestError(message, 408) from None
        except ClientDisconnect:
            raise RequestError("The client closed the connection.", 499) from None

    async def _run(self, function):
        """`function()` on a worker thread, or RequestError(504) past the request deadline (the
        thread finishes the call; its answer is dropped)."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, function)
        try:
            return await asyncio.wait_for(future, self.request_timeout)
        except asyncio.TimeoutError:
            message = f"Deadline exceeded: no answer within {self.request_timeout * 1000:g} ms."
            raise RequestError(message, 504) from None


def log_access(client, method, path, status, seconds, batch=None, tokens=None):
    """One access-log line on stderr, fields in a fixed order, values without spaces:

        access time=2025-01-31T12:00:00.123Z client=127.0.0.1 method=POST
            path=/v1/models/sentiment:predict status=200 ms=4.2 batch=2   (one line)

    A stream adds tokens=N, the tokens it generated; one the client dropped is status=499.
    """
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    host = client[0] if client else "-"
    batch = "-" if batch is None else batch
    tokens = "" if tokens is None else f" tokens={tokens}"
    print(f"access time={stamp} client={host} method={method} path={path[:300]} status={status} "
          f"ms={seconds * 1000:.1f} batch={batch}{tokens}", file=sys.stderr, flush=True)


class Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection with a deadline for each request line and its headers.

    uvicorn closes a connection idle after a response (its timeout_keep_alive) but waits
    for ever on one that sends nothing after connecting, or part of a request line, or
    its headers slowly (slowloris). Here such a connection is closed `header_timeout`
    seconds after it opened or after the first byte of the request arrived. The 400s h11
    answers itself are JSON, like the API's, and logged.
    """

    def __init__(self, *args, header_timeout=10.0, access_log=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.write_access_log = access_log
        self._header_deadline = None

    def connection_made(self, transport):
        super().connection_made(transport)
        # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which
        # socket.create_server's are not: without it a keep-alive connection's answers wait
        # ~40 ms for the client's delayed ACK (Nagle).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._watch_headers()

    def data_received(self, data):
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the request line or headers are unfinished
            self._watch_headers()
        else:
            self._unwatch_headers()

    def connection_lost(self, exc):
        self._unwatch_headers()
        super().connection_lost(exc)

    def _watch_headers(self):
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout,
                                                         self._headers_too_slow)

    def _unwatch_headers(self):
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self):
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg):
        body = json.dumps({"error": msg}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"connection", b"close")]
        response = h11.Response(status_code=400, headers=headers)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
        if self.write_access_log:
            log_access(self.client, "-", "-", 400, 0.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own.

    tflm_requests_total{api, signature, status}
                                               requests by API ("rest", "grpc"), signature
                                               ("" when not a prediction) and status (the
                                               HTTP status, or the gRPC code's name)
    tflm_request_latency_seconds{api, signature}
                                               their latency (histogram)
    tflm_batch_size                            rows per run of a signature (merged batches
                                               when batching is on)
    tflm_batch_queue_depth                     requests waiting for a batch (batching on)
    tflm_model_versions{version, state}        1 for each version, in its TF Serving state
    """

    def __init__(self, versions, batcher=None):
        self.registry = CollectorRegistry()
        self.batching = batcher is not None
        self.requests = Counter("tflm_requests", "Requests by API, signature and status.",
                                ["api", "signature", "status"], registry=self.registry)
        self.latency = Histogram("tflm_request_latency_seconds", "Request latency.",
                                 ["api", "signature"], registry=self.registry)
        self.batch_size = Histogram("tflm_batch_size", "Rows per run of a signature.",
                                    buckets=[2 ** i for i in range(11)], registry=self.registry)
        if batcher is not None:
            Gauge("tflm_batch_queue_depth", "Requests waiting for a batch.",
                  registry=self.registry).set_function(batcher.queue_depth)
        self.registry.register(_VersionStates(versions))

    def request(self, api, signature, status, seconds):
        self.requests.labels(api, signature, str(status)).inc()
        self.latency.labels(api, signature).observe(seconds)


class _VersionStates:
    def __init__(self, versions):
        self.versions = versions

    def collect(self):
        family = GaugeMetricFamily("tflm_model_versions", "Versions of the model by state.",
                                   labels=["version", "state"])
        try:
            for entry in self.versions.status():
                family.add_metric([entry["version"], entry["state"]], 1)
        except RequestError:  # no versions yet
            pass
        yield family


# -- answers -------------------------------------------------------------------------------

def _event(answer, name=None):
    """One server-sent event carrying `answer` as JSON."""
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(answer)}\n\n"


def _json(status, answer, headers=None):
    return Response(json.dumps(answer), status, headers, media_type="application/json")


def _error(error):
    # 408, 413 and 503 leave a body unread or a connection to free: close it
    headers = _CLOSE if error.status in (408, 413, 503) else None
    return _json(error.status, {"error": str(error)}, headers)


async def _request_error(request, error):
    return _error(error)


async def _http_error(request, error):  # Starlette's 404 (no route) and 405
    message = f"{error.detail}: {request.method} {request.scope['path'][:200]}"
    return _json(error.status_code, {"error": message}, error.headers)


async def _server_error(request, error):  # a fault of the server, not of the request
    return _json(500, {"error": f"{type(error).__name__}: {error}"[:1000]}, _CLOSE)


# -- JSON requests -> the signature's inputs --------------------------------------------------

def _columns(instances, specs):
    """The row format: a list of instances -> {input name: list over the batch}."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list.")
    if len(specs) == 1 and not _named_row(instances[0]):
        return {next(iter(specs)): instances}
    columns = {key: [] for key in specs}
    for row in instances:
        if not _named_row(row) or set(row) != set(specs):
            raise RequestError(f"Each instance must be an object with the inputs {sorted(specs)}.")
        for key in specs:
            columns[key].append(row[key])
    return columns


def _named_row(row):
    """An instance naming its inputs: a JSON object that is not a {"b64": ...} string."""
    return isinstance(row, dict) and not (set(row) == {"b64"} and isinstance(row["b64"], str))


def _named(inputs, specs):
    """The columnar format: {name: batch} (or the batch alone for a single input)."""
    if len(specs) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(specs)):
        inputs = {next(iter(specs)): inputs}
    if not isinstance(inputs, dict) or set(inputs) != set(specs):
        raise RequestError(f"\"inputs\" must name the inputs {sorted(specs)}.")
    return inputs


def _tensor_info(spec):
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),  # DT_FLOAT, ...
            "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": spec.name or ""}
