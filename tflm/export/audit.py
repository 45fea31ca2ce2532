"""Check that a SavedModel runs on core TensorFlow alone: `tflm export --check DIR`.

The check runs in a fresh Python where `tensorflow_text`, `keras_hub` and `tflm` cannot
be imported, so only core TensorFlow's ops are registered, as in TF Serving's stock
image or TensorFlow's C++ and Java runtimes. It lists every op type in the graph and
its functions, reports those that are not registered, loads the export and replays its
TF Serving warm-up requests. This file imports nothing but the standard library until
it runs as that fresh process.
"""

import json
import subprocess
import sys
from pathlib import Path

BLOCKED = ("tensorflow_text", "keras_hub", "keras_nlp", "tflm")
WARMUP_FILE = "tf_serving_warmup_requests"  # in assets.extra/, where TF Serving looks


def check(path):
    """Audit the export at `path` (a version folder) in a fresh process; returns its report:
    {"ops": [op types], "unregistered": [...], "signatures": [...], "warmup_requests": n,
    "error": None or the message of a load or warm-up failure}."""
    path = Path(path).resolve()
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path} holds no saved_model.pb (give a version folder, e.g. saved_models/NAME/1).")
    # cwd: the export's folder, so no package in the caller's folder shadows anything.
    result = subprocess.run([sys.executable, "-c", Path(__file__).read_text(), str(path)],
                            capture_output=True, text=True, cwd=path)
    lines = result.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"The audit of {path} did not finish:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def problems(report):
    """The report's failures as sentences (empty when the export passes)."""
    found = []
    if report["unregistered"]:
        found.append("ops that core TensorFlow does not have: " + ", ".join(report["unregistered"]))
    if report["error"]:
        found.append(report["error"])
    return found


def _audit(path):
    """Runs in the fresh process."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    proto = saved_model_pb2.SavedModel.FromString((Path(path) / "saved_model.pb").read_bytes())
    ops = set()
    for graph in proto.meta_graphs:
        functions = {f.signature.name for f in graph.graph_def.library.function}
        nodes = list(graph.graph_def.node)
        for function in graph.graph_def.library.function:
            nodes.extend(function.node_def)
        ops |= {node.op for node in nodes if node.op not in functions}
    report = {"ops": sorted(ops), "unregistered": sorted(op for op in ops if op_def_registry.get(op) is None),
              "signatures": [], "warmup_requests": 0, "error": None}
    if report["unregistered"]:
        return report
    try:
        import tensorflow as tf

        model = tf.saved_model.load(path)
        report["signatures"] = sorted(model.signatures)
        for signature, inputs in read_warmup_requests(path):
            model.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})
            report["warmup_requests"] += 1
    except Exception as error:  # the report says what failed; the caller decides
        report["error"] = f"{type(error).__name__}: {error}"[:2000]
    return report


def read_warmup_requests(path):
    """The TF Serving warm-up requests of the export at `path`: [(signature, {input: numpy})].
    (Here, not in saved_model.py, so that the fresh process can use it too.)"""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    file = Path(path) / "assets.extra" / WARMUP_FILE
    if not file.is_file():
        return []
    requests = []
    for record in tf.data.TFRecordDataset(str(file)).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        requests.append((request.model_spec.signature_name or "serving_default",
                         {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}))
    return requests


if __name__ == "__main__" and len(sys.argv) == 2:  # the fresh process check() starts
    for name in BLOCKED:
        sys.modules[name] = None  # `import name` now fails
    print(json.dumps(_audit(sys.argv[1])))
