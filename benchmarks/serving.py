"""Requests per second and latency of `tflm serve` on localhost, next to the same
signatures called in-process (CPU).

Exports two models with random weights into a temporary folder: the shakespeare-char GPT
(`generate`, 32 new tokens, top-k 10) and a bert-tiny sentiment Classifier with a WordPiece
vocabulary trained on tests/data/sst2_sample.tsv (`classify`). Each is served by a
`tflm serve` process; requests of one text each are sent one after another and then from 4
clients at once, for at most `--requests` requests or `--seconds` seconds per case.

    python benchmarks/serving.py [--requests 200] [--seconds 30]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
