"""TF Serving's gRPC API (port 8500) for `tflm serve`: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus, with tensorflow-serving-api's protos, so
TF Serving's clients work unchanged:

```python
import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
request = predict_pb2.PredictRequest()
request.model_spec.name = "sentiment"
request.model_spec.signature_name = "classify"
request.inputs["texts"].CopyFrom(tf.make_tensor_proto(["a good movie"]))
tf.make_ndarray(stub.Predict(request, timeout=10).outputs["labels"])  # array([b'positive'])
```

Errors are gRPC status codes: INVALID_ARGUMENT for a bad request, NOT_FOUND for another
model name or a version not served, UNAVAILABLE when the batch queue is full.
"""

import functools
import math
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tflm.export.predict import RequestError, signature_specs

# A TensorProto may declare a shape far larger than the values it sends (TensorFlow
# repeats the last value): refuse such shapes before numpy allocates them.
MAX_ELEMENTS = 1 << 24


def add_services(grpc_server, name, versions, predictor, metrics=None):
    """Register PredictionService and ModelService for the model `name` on `grpc_server`.

    `versions`: the served versions (`get(version)`, `status(version)`); `predictor`:
    the Predictor that runs requests; `metrics`: the server's `Metrics`, which then count
    each call (api "grpc", status the code's name).
    """
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(name, versions, predictor, metrics), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        _ModelService(name, versions, metrics), grpc_server)


def signature_def_map(model):
    """The signatures of a loaded SavedModel as the SignatureDefMap TF Serving's
    GetModelMetadata returns (its REST metadata is the same message as JSON)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, (inputs, outputs) in signature_specs(model).items():
        signature = signatures.signature_def[key]
        signature.method_name = "tensorflow/serving/predict"
        for infos, specs in ((signature.inputs, inputs), (signature.outputs, outputs)):
            for name, spec in specs.items():
                infos[name].name = spec.name or ""
                infos[name].dtype = spec.dtype.as_datatype_enum
                infos[name].tensor_shape.CopyFrom(spec.shape.as_proto())
    return signatures


def _answers(method):
    """RequestError -> its gRPC code; any other exception -> INTERNAL; each call counted in
    `self.metrics` (when there are metrics) under its signature ("" when not a Predict)."""
    @functools.wraps(method)
    def wrapped(self, request, context):
        began, code = time.perf_counter(), "OK"
        try:
            return method(self, request, context)
        except RequestError as error:
            code = error.code
            context.abort(getattr(grpc.StatusCode, error.code), str(error))
        except Exception as error:  # a fault of the server, not of the request
            code = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"[:1000])
        finally:
            if self.metrics is not None:
                signature = ""
                if method.__name__ == "Predict":
                    signature = request.model_spec.signature_name or "serving_default"
                self.metrics.request("grpc", signature, code, time.perf_counter() - began)

    return wrapped


def _version(model_spec, name):
    """The version a request's ModelSpec asks for: None (the newest) or a string for
    `versions.get`. A version_label is taken as a version number (tflm serve has no labels)."""
    if model_spec.name != name:
        raise RequestError(f"Servable not found for request: Latest({model_spec.name[:100]})", 404)
    if model_spec.HasField("version"):
        return str(model_spec.version.value)
    return model_spec.version_label or None


def _to_numpy(proto, name):
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(size < 0 for size in dims):
        raise RequestError(f"Input {name!r} has no complete shape.")
    if math.prod(dims) > MAX_ELEMENTS:
        raise RequestError(f"Input {name!r} has shape {dims}: more than {MAX_ELEMENTS} values.")
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # a TensorProto whose contents do not match its dtype or shape
        message = f"Input {name!r} is not a valid TensorProto: {str(error)[:200]}"
        raise RequestError(message) from None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, name, versions, predictor, metrics):
        self.name, self.versions, self.predictor, self.metrics = name, versions, predictor, metrics

    @_answers
    def Predict(self, request, context):
        version = _version(request.model_spec, self.name)
        signature = request.model_spec.signature_name or "serving_default"
        inputs = {name: _to_numpy(proto, name) for name, proto in request.inputs.items()}
        number, outputs = self.predictor.predict(signature, inputs, version)
        if self.metrics is not None and not self.metrics.batching:  # else the Batcher reports
            rows = [len(array) for array in inputs.values() if array.ndim]
            self.metrics.batch_size.observe(rows[0] if rows else 1)
        names = list(request.output_filter) or list(outputs)
        for name in names:
            if name not in outputs:
                raise RequestError(f"output tensor alias not found in signature: {name[:100]} "
                                   f"(outputs: {sorted(outputs)})")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = number
        response.model_spec.signature_name = signature
        for name in names:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    @_answers
    def GetModelMetadata(self, request, context):
        version = _version(request.model_spec, self.name)
        if list(request.metadata_field) != ["signature_def"]:
            raise RequestError("GetModelMetadataRequest must ask for the one metadata_field "
                               f"\"signature_def\"; got {list(request.metadata_field)[:10]}")
        number, model = self.versions.get(version)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = number
        response.metadata["signature_def"].Pack(signature_def_map(model))
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, name, versions, metrics):
        self.name, self.versions, self.metrics = name, versions, metrics

    @_answers
    def GetModelStatus(self, request, context):
        version = _version(request.model_spec, self.name)
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in self.versions.status(version):
            status = response.model_version_status.add()
            status.version = int(entry["version"])
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
            status.status.error_code = entry["status"]["error_code"]  # the enum's name
            status.status.error_message = entry["status"]["error_message"]
        return response
