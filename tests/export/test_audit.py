"""Every kind of export runs on core TensorFlow alone (TF Serving's stock image, the C++
and Java runtimes): its ops are all core TensorFlow's, and where tensorflow_text,
keras_hub and tflm cannot be imported it loads and answers as the library does."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_in_core_tensorflow, tiny_gpt
from tflm.data.classification import encode_texts
from tflm.data.corpora import tiny_shakespeare
from tflm.export import audit, saved_model
from tflm.export.saved_model import padded_batch
from tflm.generation.decode import LENGTH_BUCKET
from tflm.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, tokenize_batch

CONTEXT = 70  # not a multiple of LENGTH_BUCKET: the last length bucket is the context
UNICODE_PROMPTS = ["héllo wörld", "世界 ☃ 👩‍👩‍👧", "  two  spaces\n\nand lines", "<|endoftext|>"]


def gpt_with(tokenizer, position):
    keras.utils.set_random_seed(0)
    model = tiny_gpt(vocab_size=tokenizer.vocabulary_size(), hidden_dim=16, intermediate_dim=32,
                     max_sequence_length=CONTEXT, position=position, tokenizer=tokenizer)
    model.build((None, 8))
    return model


def byte_gpt():
    return gpt_with(ByteTokenizer(), "rotary"), UNICODE_PROMPTS


def char_gpt():
    text = tiny_shakespeare().read_text()
    return gpt_with(CharTokenizer.train(text), "sinusoidal"), ["ROMEO:", "JULIET: O", "\n"]


def bpe_gpt():
    corpus = tiny_shakespeare().read_text()[:20000] + " héllo wörld 世界 ☃ 👩‍👩‍👧 " * 20
    return gpt_with(BPETokenizer.train(corpus, 400), "learned"), UNICODE_PROMPTS


@pytest.fixture(scope="module", params=["byte", "char", "bpe"])
def gpt_export(request, tmp_path_factory):
    model, prompts = {"byte": byte_gpt, "char": char_gpt, "bpe": bpe_gpt}[request.param]()
    path = saved_model(model, tmp_path_factory.mktemp("exports") / request.param, max_new_tokens=6,
                       warmup_batch_size=2)
    return model, prompts, path


def test_gpt_exports_use_only_core_ops_and_answer_as_the_library_without_it(gpt_export):
    model, prompts, path = gpt_export
    report = audit.check(path)
    assert audit.problems(report) == [], report
    assert report["signatures"] == ["generate", "generate_tokens", "logits", "serving_default"]
    assert report["warmup_requests"] == 3 + 2 * 2  # three signatures, then batches 1, 2 x lengths 64, 70

    token_ids = np.random.default_rng(0).integers(0, model.vocab_size, (2, CONTEXT)).astype("int32")
    outputs = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        model = tf.saved_model.load({str(path)!r})
        prompts = tf.constant({prompts!r})
        n = len({prompts!r})
        default = model.signatures["serving_default"](prompts=prompts)["completions"]
        sampled = model.signatures["generate"](
            prompts=prompts, max_new_tokens=tf.fill([n], 5), temperature=tf.fill([n], 0.9),
            top_k=tf.fill([n], 4), top_p=tf.fill([n], 1.0), seed=tf.fill([n], 3))["completions"]
        logits = model.signatures["logits"](token_ids=tf.constant({token_ids.tolist()!r}))["logits"]
        print(json.dumps({{"default": [t.decode("utf-8", "replace") for t in default.numpy()],
                          "sampled": [t.decode("utf-8", "replace") for t in sampled.numpy()],
                          "logits": logits.numpy().tolist()}}))
    """)
    assert outputs["default"] == model.generate(prompts, 6)
    # a row with its own seed samples as its prompt alone does, wherever it sits in the batch
    assert outputs["sampled"] == [model.generate([p], 5, sampler="top_k", k=4, temperature=0.9, seed=3)[0]
                                  for p in prompts]
    np.testing.assert_allclose(outputs["logits"], keras.ops.convert_to_numpy(model(token_ids)), atol=1e-5)


def test_the_logits_signature_refuses_more_tokens_than_the_context(gpt_export):
    model, _, path = gpt_export  # rotary, sinusoidal and learned positions: one a tokenizer kind
    logits = tf.saved_model.load(str(path)).signatures["logits"]
    assert logits(token_ids=tf.zeros([1, CONTEXT], tf.int32))["logits"].shape == (1, CONTEXT, model.vocab_size)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"longer than the context of {CONTEXT}"):
        logits(token_ids=tf.zeros([1, CONTEXT + 1], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not below the vocabulary size"):
        logits(token_ids=tf.fill([1, 3], model.vocab_size))


def test_the_warmup_file_is_tf_servings_and_covers_every_compiled_shape(gpt_export):
    from tensorflow_serving.apis import prediction_log_pb2

    model, _, path = gpt_export
    records = tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests"))
    shapes, others = set(), []
    for record in records.as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        if request.model_spec.signature_name != "generate":
            others.append(request.model_spec.signature_name)
            continue
        lengths = tokenize_batch(model.tokenizer, inputs["prompts"]).row_lengths().numpy()
        end = int(max(lengths + inputs["max_new_tokens"]))
        shapes.add((len(inputs["prompts"]), min(-(-end // LENGTH_BUCKET) * LENGTH_BUCKET, CONTEXT)))
    assert sorted(others) == ["generate_tokens", "logits", "serving_default"]
    # What a request compiles: its batch padded to a power of two, its length bucket.
    assert shapes == {(batch, total) for batch in (1, 2) for total in (64, CONTEXT)}
    assert [int(padded_batch(tf.constant(b))) for b in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


def test_the_classifier_export_uses_only_core_ops_and_answers_as_the_library(classifier, tmp_path):
    path = saved_model(classifier, tmp_path / "sentiment")
    report = audit.check(path)
    assert audit.problems(report) == [], report
    assert report["signatures"] == ["classify", "serving_default"] and report["warmup_requests"] == 1
    texts = ["a good movie", "BAD and dull acting!", "plot", "", "Ｆｕｌｌ－ｗｉｄｔｈ soft\u00adhyphen 世界"]
    outputs = run_in_core_tensorflow(f"""
        import json
        import tensorflow as tf
        out = tf.saved_model.load({str(path)!r}).signatures["classify"](texts=tf.constant({texts!r}))
        print(json.dumps({{"probabilities": out["probabilities"].numpy().tolist(),
                          "labels": [label.decode() for label in out["labels"].numpy()]}}))
    """)
    logits = classifier(encode_texts(tf.constant(texts), classifier.tokenizer, 32))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert outputs["labels"] == [["negative", "positive"][i] for i in expected.argmax(-1)]


def test_the_check_names_the_ops_core_tensorflow_lacks(tmp_path):
    import tensorflow_text

    class CaseFold(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            return tensorflow_text.case_fold_utf8(texts)

    tf.saved_model.save(CaseFold(), str(tmp_path / "1"))
    report = audit.check(tmp_path / "1")
    assert report["unregistered"] == ["CaseFoldUTF8"]
    assert audit.problems(report) == ["ops that core TensorFlow does not have: CaseFoldUTF8"]


def test_tflm_serve_replays_the_warmup_requests_at_load(gpt, tmp_path):
    from tflm.export import Server
    from tflm.export.saved_model import write_warmup_requests

    path = saved_model(gpt, tmp_path / "model", warmup_batch_size=0)
    assert not (path / "assets.extra").exists()
    bad = {"prompts": tf.constant(["x"]), "max_new_tokens": tf.constant([1]),
           "temperature": tf.constant([0.0]), "top_k": tf.constant([0]),
           "top_p": tf.constant([0.0]), "seed": tf.constant([0])}  # top_p 0 is refused
    write_warmup_requests(path, [("generate", bad)])
    assert "top_p must be above 0" in audit.check(path)["error"]
    server = Server(tmp_path / "model", "model", host="127.0.0.1", rest_api_port=0, port=None)
    with pytest.raises(RuntimeError, match="top_p must be above 0"):  # its only version failed
        server.start()
    [status] = server.versions.status()
    assert status["state"] == "END"
    assert status["status"]["error_message"].endswith("InvalidArgumentError: top_p must be above 0")
