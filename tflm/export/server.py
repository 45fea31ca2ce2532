"""`tflm serve`: TF Serving's REST API for the SavedModels of one model name.

    GET  /v1/models/NAME[/versions/N]            version status
    GET  /v1/models/NAME[/versions/N]/metadata   the signatures, as TF Serving lists them
    POST /v1/models/NAME[/versions/N]:predict    {"signature_name": ..., "instances": [...]}
                                                 or {"signature_name": ..., "inputs": ...}

Requests and answers follow https://www.tensorflow.org/tfx/serving/api_rest: the row
format ("instances") answers {"predictions": ...}, the columnar one ("inputs")
{"outputs": ...}; errors are {"error": "..."} with HTTP 400 for a bad request and 404 for
an unknown model or version. The newest version under the base path is served, and a
version exported while the server runs is picked up at the next request. Requests run
in parallel threads (TensorFlow functions are safe to call concurrently).

Real TF Serving serves the same exports: see the README for its docker command.
"""

import base64
import json
import math
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tflm.export.audit import read_warmup_requests

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|(?P<predict>:predict))?/?$"
)


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class ModelVersions:
    """The versions of one model under `base_path` (folders named by integers), loaded
    when they appear and dropped when they disappear."""

    def __init__(self, base_path):
        self.base_path = Path(base_path)
        if not self.base_path.is_dir():
            raise FileNotFoundError(f"No model base path {self.base_path}.")
        self._loaded = {}
        self._lock = threading.Lock()
        self.refresh()
        if not self._loaded:
            raise FileNotFoundError(f"{self.base_path} holds no version (a folder named 1, 2, ...).")

    def refresh(self):
        present = {int(p.name) for p in self.base_path.iterdir()
                   if p.name.isdigit() and (p / "saved_model.pb").is_file()}
        with self._lock:
            for version in sorted(present - set(self._loaded)):
                self._loaded[version] = load_and_warm_up(self.base_path / str(version))
            for version in set(self._loaded) - present:
                del self._loaded[version]

    def versions(self):
        with self._lock:
            return sorted(self._loaded)

    def get(self, version=None):
        """`(version, loaded model)`: the newest, or `version` (a string from the URL)."""
        self.refresh()
        with self._lock:
            if not self._loaded:
                raise RequestError("No versions of the model are available.", HTTPStatus.NOT_FOUND)
            if version is None:
                number = max(self._loaded)
            elif not version.isdigit() or int(version) not in self._loaded:
                raise RequestError(f"Version {version} of the model is not available.",
                                   HTTPStatus.NOT_FOUND)
            else:
                number = int(version)
            return number, self._loaded[number]


def load_and_warm_up(path):
    """Load the SavedModel at `path` and replay its warm-up requests, as TF Serving does,
    so that the compilations they trigger happen before it serves."""
    model = tf.saved_model.load(str(path))
    for signature, inputs in read_warmup_requests(path):
        model.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})
    return model


class Server:
    """The REST API for the model `name` under `base_path`; `serve_forever()` or use the
    `http` server directly (tests start it in a thread)."""

    def __init__(self, base_path, name, port=8501, host="0.0.0.0", max_body_bytes=1 << 20,
                 max_batch_size=64):
        self.name = name
        self.models = ModelVersions(base_path)
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size
        self.http = ThreadingHTTPServer((host, port), _handler(self))
        self.http.daemon_threads = True

    @property
    def port(self):
        return self.http.server_address[1]

    def serve_forever(self):
        self.http.serve_forever()

    def shutdown(self):
        self.http.shutdown()
        self.http.server_close()

    # -- the API --------------------------------------------------------------------

    def handle(self, method, path, body):
        """`(status, JSON-able answer)` for one request."""
        match = _ROUTE.match(path)
        if match is None:
            raise RequestError(f"Malformed request: {method} {path[:200]}", HTTPStatus.NOT_FOUND)
        if match["name"] != self.name:
            raise RequestError(f"Servable not found for request: Latest({match['name'][:100]})",
                               HTTPStatus.NOT_FOUND)
        version, model = self.models.get(match["version"])
        if match["predict"]:
            if method != "POST":
                raise RequestError("Use POST for :predict.", HTTPStatus.METHOD_NOT_ALLOWED)
            return self.predict(model, body)
        if method != "GET":
            raise RequestError(f"Use GET for {path[:200]}.", HTTPStatus.METHOD_NOT_ALLOWED)
        if match["metadata"]:
            return self.metadata(version, model)
        versions = [version] if match["version"] else self.models.versions()[::-1]
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in versions
        ]}

    def metadata(self, version, model):
        signatures = {}
        for key, function in model.signatures.items():
            inputs = function.structured_input_signature[1]
            signatures[key] = {
                "inputs": {name: _tensor_info(spec) for name, spec in inputs.items()},
                "outputs": {name: _tensor_info(spec)
                            for name, spec in function.structured_outputs.items()},
                "method_name": "tensorflow/serving/predict",
            }
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(version)},
                "metadata": {"signature_def": {"signature_def": signatures}}}

    def predict(self, model, body):
        request = _parse_json(body)
        if not isinstance(request, dict):
            raise RequestError("The request must be a JSON object.")
        name = request.get("signature_name", "serving_default")
        if not isinstance(name, str) or name not in model.signatures:
            raise RequestError(f"Serving signature name: \"{str(name)[:100]}\" not found in signature def")
        function = model.signatures[name]
        specs = function.structured_input_signature[1]
        if ("instances" in request) == ("inputs" in request):
            raise RequestError("The request must have exactly one of \"instances\" or \"inputs\".")
        row_format = "instances" in request
        columns = _columns(request["instances"], specs) if row_format else _named(request["inputs"], specs)
        tensors = {key: _tensor(columns[key], spec, key, self.max_batch_size)
                   for key, spec in specs.items()}
        batches = {int(t.shape[0]) for t in tensors.values() if t.shape.rank}
        if len(batches) > 1:
            raise RequestError(f"The inputs have different batch sizes: {sorted(batches)}.")
        try:
            outputs = function(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError,
                tf.errors.FailedPreconditionError) as error:
            raise RequestError(error.message.split("\n")[0][:1000]) from None
        outputs = {key: _to_json(value.numpy()) for key, value in outputs.items()}
        if row_format:
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values()))}
            rows = len(next(iter(outputs.values())))
            return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(rows)]}
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self._answer("GET", b"")

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": "Invalid Content-Length."})
            if length > server.max_body_bytes:
                self.close_connection = True
                return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  {"error": f"The request body exceeds {server.max_body_bytes} bytes."})
            self._answer("POST", self.rfile.read(length))

        def _answer(self, method, body):
            try:
                status, answer = HTTPStatus.OK, server.handle(method, self.path, body)
            except RequestError as error:
                status, answer = error.status, {"error": str(error)}
            except Exception as error:  # a fault of the server, not of the request
                status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"[:1000]}
            self._send(status, answer)

        def _send(self, status, answer):
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):
            # What http.server answers itself (unknown methods, broken request lines) as JSON
            if code == HTTPStatus.NOT_IMPLEMENTED:
                code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"Method {self.command} is not allowed."
            self.close_connection = True
            self._send(code, {"error": message or HTTPStatus(code).phrase})

        def log_message(self, format, *args):  # quiet: one line per request is too much
            pass

    return Handler


def _parse_json(body):
    def no_constants(name):
        raise RequestError(f"{name} is not a number JSON allows.")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RequestError(f"JSON Parse error: {str(error)[:200]}") from None


def _columns(instances, specs):
    """The row format: a list of instances -> {input name: list over the batch}."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list.")
    if len(specs) == 1 and not isinstance(instances[0], dict):
        return {next(iter(specs)): instances}
    columns = {key: [] for key in specs}
    for row in instances:
        if not isinstance(row, dict) or set(row) != set(specs):
            raise RequestError(f"Each instance must be an object with the inputs {sorted(specs)}.")
        for key in specs:
            columns[key].append(row[key])
    return columns


def _named(inputs, specs):
    """The columnar format: {name: batch} (or the batch alone for a single input)."""
    if len(specs) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(specs)):
        inputs = {next(iter(specs)): inputs}
    if not isinstance(inputs, dict) or set(inputs) != set(specs):
        raise RequestError(f"\"inputs\" must name the inputs {sorted(specs)}.")
    return inputs


def _tensor(value, spec, name, max_batch_size):
    """A JSON value as a tensor of `spec`, checked: dtype, rank, fixed sizes, batch size."""
    if isinstance(value, list) and len(value) > max_batch_size:
        raise RequestError(f"Input {name!r} has a batch of {len(value)}; at most {max_batch_size}.")
    if spec.dtype == tf.string:
        array = _strings(value, name)
    else:
        array = _numbers(value, spec.dtype, name)
    if array.ndim != spec.shape.rank:
        raise RequestError(f"Input {name!r} must have rank {spec.shape.rank}; got shape {list(array.shape)}.")
    for size, expected in zip(array.shape, spec.shape.as_list()):
        if expected is not None and size != expected:
            raise RequestError(f"Input {name!r} must have shape {spec.shape.as_list()}; got {list(array.shape)}.")
    if array.ndim and array.shape[0] == 0:
        raise RequestError(f"Input {name!r} is empty.")
    return tf.constant(array, spec.dtype)


def _rectangular(value, name, leaf):
    """A nested list as a numpy object array, or an error for ragged nesting."""
    def walk(item):
        if isinstance(item, list):
            if not item:
                return (0,)
            shapes = {walk(x) for x in item}
            if len(shapes) != 1:
                raise RequestError(f"Input {name!r} is not rectangular.")
            return (len(item), *shapes.pop())
        leaf(item)
        return ()

    if isinstance(value, list) and _depth(value) > 8:
        raise RequestError(f"Input {name!r} is nested too deeply.")
    walk(value)


def _depth(value):
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


def _strings(value, name):
    def leaf(item):
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            return
        if not isinstance(item, str):
            raise RequestError(f"Input {name!r} takes strings; got {type(item).__name__}.")

    _rectangular(value, name, leaf)

    def convert(item):
        if isinstance(item, list):
            return [convert(x) for x in item]
        if isinstance(item, dict):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except ValueError:
                raise RequestError(f"Input {name!r} has invalid base64.") from None
        return item.encode("utf-8", errors="replace")

    return np.array(convert(value), dtype=object)


def _numbers(value, dtype, name):
    integer = dtype.is_integer

    def leaf(item):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise RequestError(f"Input {name!r} takes numbers ({dtype.name}); got {type(item).__name__}.")
        if integer and (isinstance(item, float) and not item.is_integer()):
            raise RequestError(f"Input {name!r} takes integers ({dtype.name}); got {item}.")
        if not math.isfinite(item):
            raise RequestError(f"Input {name!r} has a value that is not finite.")
        if integer and not dtype.min <= item <= dtype.max:
            raise RequestError(f"Input {name!r} has {item}, outside the range of {dtype.name}.")
        if not integer and abs(item) > 3.4e38:
            raise RequestError(f"Input {name!r} has {item}, outside the range of {dtype.name}.")

    _rectangular(value, name, leaf)
    return np.array(value, dtype=dtype.as_numpy_dtype)


def _to_json(array):
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace"), otypes=[object])(array).tolist() \
            if array.size else array.tolist()
    return array.tolist()


def _tensor_info(spec):
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),  # DT_FLOAT, ...
            "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": spec.name or ""}
