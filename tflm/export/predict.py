"""The request core of `tflm serve`: checks a request's inputs and runs a signature.

The REST and gRPC front ends turn a request into `{input name: numpy array}` (REST with
`to_numpy`, gRPC with `tf.make_ndarray`) and call `Predictor.predict` from their worker
threads; a request the server refuses raises `RequestError`, which carries both the HTTP
status and the gRPC code to answer.

```python
predictor = Predictor(versions)  # versions.get(None) -> (number, loaded SavedModel)
version, outputs = predictor.predict("classify", {"texts": np.array([b"a good movie"], object)})
outputs["labels"]  # array([b'positive'], dtype=object)
```
"""

import base64
import json
import re
from http import HTTPStatus

import numpy as np
import tensorflow as tf

# The gRPC status code TF Serving answers for each HTTP status it answers.
_GRPC_CODES = {
    HTTPStatus.BAD_REQUEST: "INVALID_ARGUMENT",
    HTTPStatus.NOT_FOUND: "NOT_FOUND",
    HTTPStatus.METHOD_NOT_ALLOWED: "UNIMPLEMENTED",
    HTTPStatus.REQUEST_TIMEOUT: "DEADLINE_EXCEEDED",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RESOURCE_EXHAUSTED",
    HTTPStatus.TOO_MANY_REQUESTS: "RESOURCE_EXHAUSTED",
    HTTPStatus.INTERNAL_SERVER_ERROR: "INTERNAL",
    HTTPStatus.NOT_IMPLEMENTED: "UNIMPLEMENTED",
    HTTPStatus.SERVICE_UNAVAILABLE: "UNAVAILABLE",
    HTTPStatus.GATEWAY_TIMEOUT: "DEADLINE_EXCEEDED",
}


class RequestError(Exception):
    """A request the server refuses. `status`: the HTTP status (400, 404, 405, 413, 503, ...);
    `code`: the matching gRPC status code name ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE",
    ...)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)

    @property
    def code(self):
        if self.status in _GRPC_CODES:
            return _GRPC_CODES[self.status]
        return "INVALID_ARGUMENT" if 400 <= self.status < 500 else "INTERNAL"


def signature_specs(model):
    """{signature name: (inputs {name: tf.TensorSpec}, outputs {name: tf.TensorSpec})} of a
    loaded SavedModel."""
    return {name: (function.structured_input_signature[1], function.structured_outputs)
            for name, function in model.signatures.items()}


class Predictor:
    """Runs signatures of the versions `versions` serves, optionally through a Batcher.

    Args:
        versions: an object whose `get(version)` (None for the newest, or a version
            string) returns `(number, loaded SavedModel)` or raises RequestError(404).
        batching: None, a `Batcher`, or `BatchingParameters` (the Predictor then owns a
            Batcher and closes it in `close()`). Requests to signatures whose inputs are
            all rank 1 are merged with concurrent ones of the same version and signature.
        max_batch_size: the most rows a request may have.
    """

    def __init__(self, versions, batching=None, max_batch_size=64):
        from tflm.export.batching import Batcher, BatchingParameters  # it imports RequestError

        self.versions = versions
        self.max_batch_size = max_batch_size
        self._owns_batcher = isinstance(batching, BatchingParameters)
        self.batcher = Batcher(batching) if self._owns_batcher else batching

    def predict(self, signature_name, inputs, version=None):
        """inputs: {input name: numpy array} (strings as numpy object arrays of bytes).
        Returns (version served, {output name: numpy array})."""
        number, model = self.versions.get(None if version is None else str(version))
        if not isinstance(signature_name, str) or signature_name not in model.signatures:
            raise RequestError(f"Serving signature name: \"{str(signature_name)[:100]}\" "
                               "not found in signature def")
        function = model.signatures[signature_name]
        tensors = check_inputs(inputs, function.structured_input_signature[1], self.max_batch_size)
        run = lambda tensors: run_signature(function, tensors)  # noqa: E731
        if self.batcher is None:
            return number, run(tensors)
        # id(model): a version reloaded under the same number is another queue
        return number, self.batcher.run((number, signature_name, id(model)), run, tensors)

    def close(self):
        if self._owns_batcher:
            self.batcher.close()


def check_inputs(inputs, specs, max_batch_size):
    """`inputs` {name: numpy array} checked against the signature's `specs`: names, dtypes,
    ranks, fixed sizes, one non-empty batch size of at most `max_batch_size`."""
    if not isinstance(inputs, dict) or set(inputs) != set(specs):
        given = sorted(map(str, inputs)) if isinstance(inputs, dict) else []
        raise RequestError(f"The signature takes the inputs {sorted(specs)}; got {given[:20]}.")
    batches = set()
    for name, spec in specs.items():
        array = inputs[name]
        expected = np.dtype(object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
        if not isinstance(array, np.ndarray) or array.dtype != expected:
            got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise RequestError(f"Input {name!r} must be {spec.dtype.name}; got {got}.")
        if array.ndim != spec.shape.rank:
            raise RequestError(f"Input {name!r} must have rank {spec.shape.rank}; "
                               f"got shape {list(array.shape)}.")
        for size, fixed in zip(array.shape, spec.shape.as_list()):
            if fixed is not None and size != fixed:
                raise RequestError(f"Input {name!r} must have shape {spec.shape.as_list()}; "
                                   f"got {list(array.shape)}.")
        if array.ndim:
            batches.add(array.shape[0])
    if len(batches) > 1:
        raise RequestError(f"The inputs have different batch sizes: {sorted(batches)}.")
    batch = batches.pop() if batches else None
    if batch == 0:
        raise RequestError("The inputs are empty (a batch of 0).")
    if batch is not None and batch > max_batch_size:
        raise RequestError(f"The request has a batch of {batch}; at most {max_batch_size}.")
    return inputs


def run_signature(function, tensors):
    """Call a signature on numpy inputs; numpy outputs. A TensorFlow error the inputs
    caused (an assertion in the graph) is a RequestError with the assertion's message."""
    try:
        outputs = function(**{name: tf.constant(value) for name, value in tensors.items()})
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError,
            tf.errors.FailedPreconditionError) as error:
        raise RequestError(error_message(error)) from None
    return {name: value.numpy() for name, value in outputs.items()}


# TF's Assert prints its data as "[message] [Condition ...] [x (...) = ] [values]"
_ASSERTION = re.compile(r"assertion failed: \[(.*?)\](?: \[|\n|$)", re.DOTALL)


def error_message(error):
    """The text a person needs from a TensorFlow error: the message of the failed
    tf.debugging assertion ("top_p must be above 0"), else its first line that is not
    TensorFlow's preamble ("Graph execution error:", "Detected at node ...")."""
    match = _ASSERTION.search(error.message)
    if match:
        return match[1].strip().rstrip(".").strip()[:1000]
    for line in error.message.splitlines():
        line = re.sub(r"\s*(\[\[\{\{.*|\[Op:.*)$", "", line).strip()
        preamble = ("Graph execution error", "Detected at node", "<stack traces")
        if line and not line.startswith(preamble):
            return line[:1000]
    return "The model could not run on these inputs."


# -- JSON (TF Serving's REST API) <-> numpy ------------------------------------------------

def parse_json(body):
    """The JSON value of a request body (bytes); RequestError(400) for anything that is not
    JSON or that Python's parser refuses (NaN, Infinity, integers of over 4,300 digits,
    nesting deeper than its recursion limit)."""
    def no_constants(name):
        raise RequestError(f"{name} is not a number JSON allows.")

    # JSONDecodeError and Python's error for too many digits are ValueErrors
    try:
        return json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(f"JSON Parse error: {str(error)[:200]}") from None


def to_numpy(value, spec, name):
    """A JSON value (nested lists of the signature input's rank) as a numpy array of `spec`'s
    dtype: strings (or {"b64": ...}) as an object array of bytes, numbers checked against
    the dtype's range. RequestError(400) for any other value, ragged or too deep nesting."""
    shape, leaves = _flatten(value, spec.shape.rank, name)
    dtype = spec.dtype
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = [_string(leaf, name) for leaf in leaves]
    elif dtype.is_integer or dtype.is_floating:
        numbers = [_number(leaf, dtype, name) for leaf in leaves]
        array = np.array(numbers, dtype=dtype.as_numpy_dtype)
    elif dtype == tf.bool:
        if not all(isinstance(leaf, bool) for leaf in leaves):
            raise RequestError(f"Input {name!r} takes true or false.")
        array = np.array(leaves, dtype=bool)
    else:
        raise RequestError(f"Input {name!r} has the type {dtype.name}, which JSON cannot give.")
    return array.reshape(shape)


def _flatten(value, rank, name):
    """(shape, leaves in row-major order) of nested lists `rank` deep, walked level by
    level: never deeper than `rank`, so no nesting exhausts the stack."""
    shape, level = [], [value]
    for _ in range(rank):
        if not all(isinstance(item, list) for item in level):
            raise RequestError(f"Input {name!r} must have rank {rank}; "
                               f"got a value nested {len(shape)} deep.")
        sizes = {len(item) for item in level}
        if len(sizes) > 1:
            raise RequestError(f"Input {name!r} is not rectangular "
                               f"(rows of lengths {sorted(sizes)[:10]}).")
        shape.append(sizes.pop() if sizes else 0)
        level = [x for item in level for x in item]
    if any(isinstance(leaf, list) for leaf in level):
        raise RequestError(f"Input {name!r} must have rank {rank}; got lists nested deeper.")
    return shape, level


def _string(leaf, name):
    if isinstance(leaf, str):
        return leaf.encode("utf-8", errors="replace")  # JSON allows lone surrogates
    if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except ValueError:
            raise RequestError(f"Input {name!r} has invalid base64.") from None
    raise RequestError(f"Input {name!r} takes strings; got {type(leaf).__name__}.")


def _number(leaf, dtype, name):
    if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
        raise RequestError(f"Input {name!r} takes numbers ({dtype.name}); "
                           f"got {type(leaf).__name__}.")
    if isinstance(leaf, float) and not np.isfinite(leaf):
        raise RequestError(f"Input {name!r} has a value that is not finite.")
    if dtype.is_integer and isinstance(leaf, float) and not leaf.is_integer():
        raise RequestError(f"Input {name!r} takes integers ({dtype.name}); got {leaf}.")
    # Python compares ints of any size with Python floats exactly (numpy's would overflow)
    kind = int if dtype.is_integer else float
    if not kind(dtype.min) <= leaf <= kind(dtype.max):
        small = isinstance(leaf, float) or leaf.bit_length() < 64
        text = str(leaf) if small else f"a {leaf.bit_length()}-bit integer"
        raise RequestError(f"Input {name!r} has {text}, outside the range of {dtype.name}.")
    return leaf


def to_json(array):
    """A numpy output as JSON-able lists: strings decoded from UTF-8."""
    if array.dtype == object:
        flat = [b.decode("utf-8", errors="replace") if isinstance(b, bytes) else b
                for b in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()
