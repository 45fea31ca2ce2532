"""Server-side batching: concurrent requests merged into fewer calls, results unchanged."""

import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.export.helpers import Versions, generate_inputs, strings
from tflm.export.batching import Batcher, BatchingParameters
from tflm.export.predict import Predictor, RequestError


def wait_for(condition, what):
    """Poll `condition` until true; fail after a deadline far above any normal wait."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Gated:
    """A function of {name: array} that records the rows of each call; the first call
    waits for `gate`, so that the requests after it queue up behind it."""

    def __init__(self, function):
        self.function, self.calls = function, []
        self.started, self.gate = threading.Event(), threading.Event()

    def __call__(self, tensors):
        self.calls.append(len(next(iter(tensors.values()))))
        if len(self.calls) == 1:
            self.started.set()
            assert self.gate.wait(60)
        return self.function(tensors)


def double(tensors):
    upper = np.array([s.upper() for s in tensors["s"]], object)
    return {"doubled": tensors["x"] * 2, "upper": upper}


def request(rows, start):
    x = np.arange(start, start + rows, dtype=np.int32)
    return {"x": x, "s": np.array([f"r{i}".encode() for i in x], object)}


def run_all(batcher, key, function, requests):
    """Start `requests` in threads one after another, each queued before the next starts;
    returns the threads' results (outputs or RequestError) once `function` is released."""
    results = [None] * len(requests)

    def client(i):
        try:
            results[i] = batcher.run(key, function, requests[i])
        except RequestError as error:
            results[i] = error

    threads = []
    for i in range(len(requests)):
        threads.append(threading.Thread(target=client, args=(i,)))
        threads[-1].start()
        if i == 0:
            assert function.started.wait(60)
        else:
            wait_for(lambda: batcher.queue_depth() == i, f"request {i} to queue")
    function.gate.set()
    for thread in threads:
        thread.join(60)
    return results


def test_defaults_are_tf_servings():
    # BasicBatchScheduler::Options: 1000 rows, no timeout, 10 batches, a thread a core
    assert BatchingParameters() == BatchingParameters(1000, 0, 10, os.cpu_count())


def test_queued_requests_run_as_one_call_and_get_their_own_rows():
    batcher = Batcher(BatchingParameters(max_batch_size=16, num_batch_threads=1))
    function = Gated(double)
    requests = [request(1, 0), request(3, 10), request(1, 20), request(2, 30), request(4, 40)]
    results = run_all(batcher, "key", function, requests)
    batcher.close()
    assert function.calls == [1, 10]  # the first alone, then the four queued behind it at once
    for inputs, outputs in zip(requests, results):
        expected = double(inputs)
        np.testing.assert_array_equal(outputs["doubled"], expected["doubled"])
        np.testing.assert_array_equal(outputs["upper"], expected["upper"])


def test_batches_hold_whole_requests_up_to_max_batch_size():
    batcher = Batcher(BatchingParameters(max_batch_size=4, num_batch_threads=1))
    function = Gated(double)
    rows = [1, 3, 2, 2, 1, 4]
    requests = [request(n, 10 * i) for i, n in enumerate(rows)]
    results = run_all(batcher, "key", function, requests)
    batcher.close()
    # [1] runs; queued: [3] (3 + 2 > 4), [2, 2], [1] (+ 4 > 4), [4]
    assert function.calls == [1, 3, 4, 1, 4]
    for inputs, outputs in zip(requests, results):
        np.testing.assert_array_equal(outputs["doubled"], inputs["x"] * 2)


def test_other_keys_and_other_ranks_are_not_merged():
    batcher = Batcher(BatchingParameters(max_batch_size=8, num_batch_threads=1))
    function = Gated(double)
    blocker = threading.Thread(target=batcher.run, args=("a", function, request(1, 0)))
    blocker.start()
    assert function.started.wait(60)
    results = {}
    def client(key):
        results[key] = batcher.run(key, function, request(2, 5))

    threads = [threading.Thread(target=client, args=(key,)) for key in ("b", "c")]
    for thread in threads:
        thread.start()
    wait_for(lambda: batcher.queue_depth() == 2, "both to queue")
    # Rank 2 inputs (logits' token ids) run at once, beside the queue
    matrix = batcher.run("b", lambda t: {"sum": t["ids"].sum(axis=1)}, {"ids": np.ones([2, 3])})
    np.testing.assert_array_equal(matrix["sum"], [3, 3])
    function.gate.set()
    for thread in threads + [blocker]:
        thread.join(60)
    batcher.close()
    assert function.calls == [1, 2, 2]
    np.testing.assert_array_equal(results["c"]["doubled"], [10, 12])


def test_a_full_queue_is_503_at_once_and_too_many_rows_400():
    batcher = Batcher(BatchingParameters(max_batch_size=2, max_enqueued_batches=1,
                                         num_batch_threads=1))
    function = Gated(double)
    first = threading.Thread(target=batcher.run, args=("key", function, request(1, 0)))
    first.start()
    assert function.started.wait(60)  # the thread runs the first; the queue is empty
    second = threading.Thread(target=batcher.run, args=("key", function, request(2, 1)))
    second.start()
    wait_for(lambda: batcher.queue_depth() == 1, "the second to queue")  # one batch, full
    refused = []
    def third_client():
        refused.append(pytest.raises(RequestError, batcher.run, "key", function, request(1, 3)))

    third = threading.Thread(target=third_client)
    third.start()
    third.join(60)  # returns while the first still holds the only thread
    assert not function.gate.is_set() and refused
    assert refused[0].value.status == 503 and refused[0].value.code == "UNAVAILABLE"
    assert "queue" in str(refused[0].value)
    with pytest.raises(RequestError, match="batch of 3; batches hold at most 2") as error:
        batcher.run("key", function, request(3, 0))
    assert error.value.status == 400
    function.gate.set()
    first.join(60)
    second.join(60)
    batcher.close()
    assert function.calls == [1, 2]
    with pytest.raises(RequestError) as error:
        batcher.run("key", double, request(1, 0))
    assert error.value.status == 503  # closed


def test_a_batch_waits_for_more_only_until_full():
    # A timeout no test would wait for: the batch runs because the fourth row fills it.
    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=600_000_000,
                                         num_batch_threads=1))
    calls = []
    results = [None] * 4

    def function(tensors):
        calls.append(len(tensors["x"]))
        return double(tensors)

    def client(i):
        results[i] = batcher.run("key", function, request(1, i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher.close()
    assert calls == [4] and [r["doubled"].tolist() for r in results] == [[0], [2], [4], [6]]


def test_parameters_file(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("# TF Serving's text format\n"
                    "max_batch_size { value: 128 }\n"
                    "batch_timeout_micros { value: 500 }\n"
                    "max_enqueued_batches: { value: 1000000 }\n"
                    "num_batch_threads <value: 8>\n")
    assert BatchingParameters.from_file(path) == BatchingParameters(128, 500, 1_000_000, 8)
    path.write_text("num_batch_threads { value: 3 }")
    assert BatchingParameters.from_file(path) == BatchingParameters(1000, 0, 10, 3)
    for text, message in [
        ("max_batch_size { value: 8 }\nallowed_batch_sizes: 8",
         "no field named \"allowed_batch_sizes\""),
        ("max_batch_size { value: 0 }", "max_batch_size must be an integer of at least 1; got 0"),
        ("batch_timeout_micros { value: -1 }",
         "batch_timeout_micros must be an integer of at least 0"),
        ("max_batch_size: 8", ""),
        ("max_batch_size { value: 8 } max_batch_size { value: 9 }", "multiple \"max_batch_size\""),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match="batching.txt") as error:
            BatchingParameters.from_file(path)
        assert message in str(error.value)
        if "no field" in message:
            names = "max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads"
            assert names in str(error.value)


# -- through the Predictor, on real exports ----------------------------------------------------

class GatedModel:
    """A loaded SavedModel whose signatures are Gated: the first call waits."""

    def __init__(self, model, name):
        real = model.signatures[name]
        self.gated = Gated(lambda tensors: real(**tensors))
        self.signatures = {name: lambda **tensors: self.gated(tensors)}
        self.signatures[name].structured_input_signature = real.structured_input_signature
        self.signatures[name].structured_outputs = real.structured_outputs


def predict_all(model, signature, requests):
    """Run `requests` through a batching Predictor, the first holding the only batch thread
    until the rest have queued; returns (calls' row counts, results)."""
    gated = GatedModel(model, signature)
    parameters = BatchingParameters(max_batch_size=16, num_batch_threads=1)
    predictor = Predictor(Versions({1: gated}), parameters)
    results = [None] * len(requests)

    def client(i):
        try:
            results[i] = predictor.predict(signature, requests[i])[1]
        except RequestError as error:
            results[i] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    assert gated.gated.started.wait(60)
    for i, thread in enumerate(threads[1:], start=1):
        thread.start()
        wait_for(lambda: predictor.batcher.queue_depth() == i, f"request {i} to queue")
    gated.gated.gate.set()
    for thread in threads:
        thread.join(120)
    predictor.close()
    return gated.gated.calls, results


def test_batched_classify_equals_unbatched(models):
    texts = [["a good movie"], ["bad and dull", "good"], ["a plot"],
             ["dull acting", "x", "good good"]]
    requests = [{"texts": strings(*t)} for t in texts]
    calls, results = predict_all(models["classifier"], "classify", requests)
    assert calls == [1, 6]
    for batch, outputs in zip(texts, results):
        alone = models["classifier"].signatures["classify"](texts=tf.constant(batch))
        np.testing.assert_array_equal(outputs["labels"], alone["labels"].numpy())
        np.testing.assert_allclose(outputs["probabilities"], alone["probabilities"].numpy(),
                                   atol=1e-6)


def test_batched_generate_equals_unbatched_and_a_bad_request_fails_alone(models):
    # Sampled rows too: a row with its own seed samples the same wherever it sits in a batch.
    requests = [generate_inputs(["ROMEO:"], max_new_tokens=3, temperature=0.9, top_k=5, seed=4),
                generate_inputs(["JULIET: O Romeo", "\n"], max_new_tokens=9, top_p=0.9, temperature=1.0,
                                seed=11),
                generate_inputs(["To be"], max_new_tokens=5, top_p=0.0),  # refused by the graph
                generate_inputs(["First Citizen:"], max_new_tokens=40)]
    calls, results = predict_all(models["gpt"], "generate", requests)
    assert calls == [1, 4, 2, 1, 1]  # the batch failed: then each of its requests alone
    assert isinstance(results[2], RequestError) and str(results[2]) == "top_p must be above 0"
    for inputs, outputs in zip(requests, results):
        if inputs is requests[2]:
            continue
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        alone = models["gpt"].signatures["generate"](**tensors)
        np.testing.assert_array_equal(outputs["completions"], alone["completions"].numpy())
