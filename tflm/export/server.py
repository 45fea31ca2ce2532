"""`tflm serve`: TF Serving's REST (8501) and gRPC (8500) APIs for the SavedModels of one
model name, a drop-in for TF Serving's model server.

The versions under the base path are loaded as TF Serving loads them (tflm.export.versions:
a version policy, a poll for new versions, warm-up requests replayed before a version
serves); requests run through one Predictor (tflm.export.predict), with TF Serving's
server-side batching when it is on (tflm.export.batching). The REST API is
tflm.export.rest on uvicorn; gRPC is tflm.export.grpc_service on grpcio.

```python
server = Server("saved_models/sentiment", "sentiment", host="127.0.0.1")
server.start()          # loads the versions, then listens on 8501 (REST) and 8500 (gRPC)
server.serve_forever()  # until SIGTERM or SIGINT: finishes the requests under way, then returns
```

Connections cost no thread: the REST API runs on one event loop and hands predictions to a
pool of `rest_api_num_threads` threads. A connection is closed when its request line and
headers take over `header_timeout` seconds, its body over `body_timeout` seconds, or it
stays idle `idle_timeout` seconds after a response.
"""

import concurrent.futures
import functools
import logging
import os
import signal
import socket
import threading
import time

import grpc
import uvicorn

from tflm.export.batching import Batcher
from tflm.export.grpc_service import add_services
from tflm.export.predict import Predictor, RequestError
from tflm.export.rest import Metrics, Protocol, RestApi
from tflm.export.versions import ModelVersions

logger = logging.getLogger(__name__)


class Server:
    """TF Serving's REST and gRPC APIs for the model `name`, whose versions are folders
    under `base_path`.

    Args:
        rest_api_port, port: the REST and the gRPC port; 0 picks a free one (read the bound
            ports from the attributes after `start()`); None serves no REST or no gRPC.
        host: the interface to listen on; "0.0.0.0" (TF Serving's) listens on all of them.
        max_body_bytes: the largest request body (REST) or message (gRPC).
        max_batch_size: the most rows in one request.
        rest_api_timeout_in_ms: a prediction that takes longer is answered 504 (REST).
        file_system_poll_wait_seconds: the wait between scans of `base_path` for versions.
        model_version_policy: "latest", "all", or a tuple of version numbers.
        batching: None, or `BatchingParameters` to merge concurrent requests into batches.
        monitoring: serve Prometheus metrics at /monitoring/prometheus/metrics.
        max_connections: past this many open REST connections, requests are answered 503.
        rest_api_num_threads: threads that run REST predictions (default 4 per CPU, as
            TF Serving's); also the gRPC server's threads.
        header_timeout, body_timeout, idle_timeout: seconds (see the module's docstring).
        access_log: one line on stderr for each REST request.
    """

    def __init__(self, base_path, name, *, host="0.0.0.0", rest_api_port=8501, port=8500,
                 max_body_bytes=1 << 20, max_batch_size=64, rest_api_timeout_in_ms=30000,
                 file_system_poll_wait_seconds=1.0, model_version_policy="latest",
                 batching=None, monitoring=False, max_connections=1000,
                 rest_api_num_threads=None, header_timeout=10.0, body_timeout=30.0,
                 idle_timeout=75.0, access_log=True):
        self.name, self.host = name, host
        self.rest_api_port, self.port = rest_api_port, port
        self.versions = ModelVersions(base_path, model_version_policy,
                                      file_system_poll_wait_seconds)
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size
        self.request_timeout = rest_api_timeout_in_ms / 1000
        self.batching = batching
        self.monitoring = monitoring
        self.max_connections = max_connections
        self.threads = rest_api_num_threads or 4 * (os.cpu_count() or 1)
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.idle_timeout = idle_timeout
        self.access_log = access_log
        self.batcher = self.predictor = self.metrics = None
        self._rest = self._rest_thread = self._grpc = self._executor = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._started = self._stopped = False

    def start(self):
        """Load the versions, then listen; returns once both APIs accept connections."""
        self._started = True
        try:
            self._start()
        except BaseException:  # a port in use, no version that loads: stop what started
            self.shutdown()
            raise

    def _start(self):
        self.versions.start()
        self.versions.wait_until_ready()
        self._check_versions()
        if self.batching is not None:
            self.batcher = Batcher(self.batching, on_batch=self._on_batch)
        if self.monitoring:
            self.metrics = Metrics(self.versions, self.batcher)
        self.predictor = Predictor(self.versions, self.batcher, self.max_batch_size)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                               thread_name_prefix="tflm-rest")
        if self.rest_api_port is not None:
            self._start_rest()
        if self.port is not None:
            self._start_grpc()

    def _on_batch(self, key, rows, requests):
        if self.metrics is not None:
            self.metrics.batch_size.observe(rows)

    def _check_versions(self):
        """Stop when every version failed to load (TF Serving exits then too); an empty base
        path is polled until a version appears."""
        if self.versions.available():
            return
        try:
            errors = [entry["status"]["error_message"] for entry in self.versions.status()]
        except RequestError:  # no version folders yet
            logger.warning("No versions of %s under %s yet; waiting for one.", self.name,
                           self.versions.base_path)
            return
        raise RuntimeError(f"No version of {self.name!r} loaded: " + "; ".join(errors))

    def _start_rest(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.rest_api_port), family=family)
        self.rest_api_port = sock.getsockname()[1]
        api = RestApi(self.name, self.versions, self.predictor, executor=self._executor,
                      max_body_bytes=self.max_body_bytes, request_timeout=self.request_timeout,
                      body_timeout=self.body_timeout, max_connections=self.max_connections,
                      connections=lambda: len(self._rest.server_state.connections),
                      metrics=self.metrics, access_log=self.access_log)
        config = uvicorn.Config(
            api, http=functools.partial(Protocol, header_timeout=self.header_timeout,
                                        access_log=self.access_log),
            ws="none", lifespan="off", log_config=None, access_log=False, server_header=False,
            timeout_keep_alive=self.idle_timeout,
            # requests under way end within their deadline; then the rest are cancelled
            timeout_graceful_shutdown=self.request_timeout + 5)
        self._rest = uvicorn.Server(config)
        self._rest_thread = threading.Thread(target=self._rest.run, kwargs={"sockets": [sock]},
                                             name="tflm-rest-loop", daemon=True)
        self._rest_thread.start()
        while not self._rest.started:
            if not self._rest_thread.is_alive():
                raise RuntimeError("The REST server stopped while starting.")
            time.sleep(0.01)

    def _start_grpc(self):
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="tflm-grpc"),
            options=[("grpc.max_receive_message_length", self.max_body_bytes),
                     ("grpc.so_reuseport", 0)])  # a port in use is an error, not shared
        add_services(self._grpc, self.name, self.versions, self.predictor, self.metrics)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            self.port = self._grpc.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as error:  # grpcio raises, or returned 0 before 1.51
            raise OSError(f"Cannot listen for gRPC on {host}:{self.port}: {error}") from None
        self._grpc.start()

    def serve_forever(self):
        """Serve until `shutdown()` or, in the main thread, SIGTERM or SIGINT; then shut down
        gracefully. A second signal during the shutdown ends the process at once."""
        if not self._started:
            self.start()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            def stop(number, frame):
                for sig, handler in handlers.items():  # a second signal: the usual effect
                    signal.signal(sig, handler)
                self._stopping.set()

            handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.shutdown()

    def shutdown(self):
        """Stop listening, finish the requests under way, then unload the versions."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping.set()
        grpc_stopped = self._grpc.stop(self.request_timeout + 5) if self._grpc is not None else None
        if self._rest is not None:
            self._rest.should_exit = True
            self._rest_thread.join()
        if grpc_stopped is not None:
            grpc_stopped.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.predictor is not None:
            self.predictor.close()
        if self.batcher is not None:
            self.batcher.close()
        self.versions.stop()
