"""TF Serving's gRPC API, called with tensorflow-serving-api's client stubs as its users do."""

from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.export.helpers import Versions
from tflm.export.batching import BatchingParameters
from tflm.export.grpc_service import add_services
from tflm.export.predict import Predictor


def serve(name, versions, predictor):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_services(server, name, versions, predictor)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def shakespeare(models):
    predictor = Predictor(Versions({1: models["gpt"]}), max_batch_size=8)
    server, channel = serve("shakespeare", predictor.versions, predictor)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    server.stop(None)


@pytest.fixture(scope="module")
def sentiment(models):
    # versions 1 and 2 (the same export) and batching on
    predictor = Predictor(Versions({1: models["classifier"], 2: models["classifier"]}),
                          BatchingParameters(max_batch_size=8, num_batch_threads=2))
    server, channel = serve("sentiment", predictor.versions, predictor)
    yield channel
    channel.close()
    server.stop(None)
    predictor.close()


def predict_request(name, signature=None, version=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_predict_equals_calling_the_signature(shakespeare, models):
    inputs = dict(prompts=["ROMEO:", "JULIET:"], max_new_tokens=np.int32([5, 3]),
                  temperature=np.float32([0.8, 0.0]), top_k=np.int32([5, 0]),
                  top_p=np.float32([1.0, 1.0]), seed=np.int32([3, 0]))
    response = shakespeare.Predict(predict_request("shakespeare", "generate", **inputs), timeout=60)
    direct = models["gpt"].signatures["generate"](**{k: tf.constant(v) for k, v in inputs.items()})
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["completions"]),
                                  direct["completions"].numpy())
    assert response.model_spec.name == "shakespeare" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "generate"

    token_ids = np.random.default_rng(0).integers(0, 65, (2, 9)).astype(np.int32)
    response = shakespeare.Predict(predict_request("shakespeare", "logits", token_ids=token_ids),
                                   timeout=60)
    direct = models["gpt"].signatures["logits"](token_ids=tf.constant(token_ids))["logits"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["logits"]), direct.numpy(),
                               atol=1e-6)

    # no signature name: serving_default, as TF Serving
    response = shakespeare.Predict(predict_request("shakespeare", prompts=["ROMEO:"]), timeout=60)
    direct = models["gpt"].signatures["serving_default"](prompts=tf.constant(["ROMEO:"]))
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["completions"]),
                                  direct["completions"].numpy())
    assert response.model_spec.signature_name == "serving_default"


def test_versions_labels_and_output_filter(sentiment, models):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(sentiment)
    texts = ["a good movie", "bad and dull"]
    direct = models["classifier"].signatures["classify"](texts=tf.constant(texts))
    request = predict_request("sentiment", "classify", texts=texts)
    response = stub.Predict(request, timeout=60)
    assert response.model_spec.version.value == 2  # the newest
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               direct["probabilities"].numpy(), atol=1e-6)
    request.model_spec.version_label = "1"
    request.output_filter.append("labels")
    response = stub.Predict(request, timeout=60)
    assert response.model_spec.version.value == 1 and list(response.outputs) == ["labels"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["labels"]),
                                  direct["labels"].numpy())


def test_metadata_lists_the_signatures(shakespeare):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "shakespeare"
    response = shakespeare.GetModelMetadata(request, timeout=60)
    assert response.model_spec.name == "shakespeare" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signatures = signatures.signature_def
    assert set(signatures) == {"serving_default", "generate", "generate_tokens", "logits"}
    assert set(signatures["generate"].inputs) == {"prompts", "max_new_tokens", "temperature",
                                                  "top_k", "top_p", "seed"}
    assert signatures["generate"].inputs["top_p"].dtype == tf.float32.as_datatype_enum
    assert signatures["generate"].outputs["completions"].dtype == tf.string.as_datatype_enum
    logits = signatures["logits"].outputs["logits"].tensor_shape
    assert [d.size for d in logits.dim] == [-1, -1, 65]
    assert signatures["logits"].method_name == "tensorflow/serving/predict"


def test_model_status(sentiment):
    stub = model_service_pb2_grpc.ModelServiceStub(sentiment)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "sentiment"
    response = stub.GetModelStatus(request, timeout=60)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state) for s in response.model_version_status] == [(2, available),
                                                                              (1, available)]
    assert all(s.status.error_code == 0 and s.status.error_message == ""  # OK
               for s in response.model_version_status)
    request.model_spec.version.value = 1
    assert [s.version for s in stub.GetModelStatus(request, timeout=60).model_version_status] == [1]


def call_error(function, request):
    with pytest.raises(grpc.RpcError) as error:
        function(request, timeout=60)
    return error.value.code(), error.value.details()


def test_errors_are_grpc_status_codes(shakespeare, sentiment):
    prompts = dict(prompts=["ROMEO:"])
    bad_settings = dict(prompts=["a"], max_new_tokens=np.int32([3]), temperature=np.float32([0]),
                        top_k=np.int32([0]), top_p=np.float32([0]), seed=np.int32([0]))
    cases = [
        (predict_request("other", **prompts), grpc.StatusCode.NOT_FOUND, "Latest(other)"),
        (predict_request("shakespeare", version=2, **prompts), grpc.StatusCode.NOT_FOUND, "2"),
        (predict_request("shakespeare", "nope", **prompts), grpc.StatusCode.INVALID_ARGUMENT,
         "Serving signature name: \"nope\" not found"),
        (predict_request("shakespeare", "logits", token_ids=np.float32([[1]])),
         grpc.StatusCode.INVALID_ARGUMENT, "'token_ids' must be int32; got float32"),
        (predict_request("shakespeare", "generate", **bad_settings),
         grpc.StatusCode.INVALID_ARGUMENT, "top_p must be above 0"),
        (predict_request("shakespeare", prompts=["a"] * 9), grpc.StatusCode.INVALID_ARGUMENT,
         "at most 8"),
        (predict_request("shakespeare", texts=["a"]), grpc.StatusCode.INVALID_ARGUMENT,
         "takes the inputs ['prompts']"),
    ]
    filtered = predict_request("shakespeare", **prompts)
    filtered.output_filter.append("nope")
    cases.append((filtered, grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found"))
    huge = predict_request("shakespeare", "logits", token_ids=np.int32([[1]]))
    huge.inputs["token_ids"].tensor_shape.dim[0].size = 1 << 40  # one value, a huge shape
    cases.append((huge, grpc.StatusCode.INVALID_ARGUMENT, "values"))
    broken = predict_request("shakespeare", "logits", token_ids=np.int32([[1, 2]]))
    broken.inputs["token_ids"].tensor_content = b"\x00" * 5  # not 2 int32s
    cases.append((broken, grpc.StatusCode.INVALID_ARGUMENT, "not a valid TensorProto"))
    for request, code, message in cases:
        got, details = call_error(shakespeare.Predict, request)
        assert got == code and message in details, (got, details)

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "shakespeare"
    assert call_error(shakespeare.GetModelMetadata, metadata)[0] == grpc.StatusCode.INVALID_ARGUMENT
    metadata.metadata_field.append("signature_def")
    metadata.model_spec.name = "other"
    assert call_error(shakespeare.GetModelMetadata, metadata)[0] == grpc.StatusCode.NOT_FOUND

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "sentiment"
    status.model_spec.version_label = "²"
    stub = model_service_pb2_grpc.ModelServiceStub(sentiment)
    assert call_error(stub.GetModelStatus, status)[0] == grpc.StatusCode.NOT_FOUND
