"""The versions of one model that `tflm serve` serves, managed as TF Serving manages them.

    BASE/NAME/1/          a version: a SavedModel folder named by its number
    BASE/NAME/2/          a newer version
    BASE/NAME/.tmp-3-42/  ignored (an export being written; also any other name)

A background thread polls the base path every `poll_seconds` (TF Serving's
--file_system_poll_wait_seconds), loads the versions the policy wants and replays their
warm-up requests before they serve. Requests never wait for a load: they are answered
by the versions already AVAILABLE. Each version goes through TF Serving's states

    START -> LOADING -> AVAILABLE -> END      (unloaded: error_code OK)
    START -> LOADING -> END                   (failed: its error in the status)

A version that fails to load is tried again only once its folder changes. Policies:
"latest" serves the newest version that loads, and unloads the older one only once the
newer one is AVAILABLE (so a failed export leaves the previous version serving); "all"
serves every version; a tuple of numbers serves exactly those. A version whose folder
disappears is unloaded.
"""

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import tensorflow as tf

from tflm.export.audit import read_warmup_requests
from tflm.export.predict import RequestError, error_message

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits that fit an int64, as TF Serving takes them
_ERROR_CODES = {getattr(tf.errors, name): name for name in (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")}


def load_and_warm_up(path):
    """Load the SavedModel at `path` and replay its warm-up requests, as TF Serving does,
    so that the compilations they trigger happen before it serves."""
    model = tf.saved_model.load(str(path))
    for signature, inputs in read_warmup_requests(path):
        model.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})
    return model


@dataclass
class _Version:
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""
    model: object = None
    fingerprint: tuple = ()  # of the folder when its load began

    def failed(self):
        return self.state == "END" and self.error_code != "OK"


class ModelVersions:
    """The versions of the model under `base_path`, loaded in a background thread.

    `policy` is "latest", "all" or a tuple (or list) of version numbers. `poll_seconds` is the
    wait between scans of `base_path`; 0 or less scans once.

    Example:

    ```python
    versions = ModelVersions("saved_models/sentiment")
    versions.start()
    versions.wait_until_ready(timeout=60)
    number, model = versions.get()  # the newest AVAILABLE version
    model.signatures["classify"](texts=tf.constant(["a good movie"]))
    versions.stop()
    ```
    """

    def __init__(self, base_path, policy="latest", poll_seconds=1.0):
        self.base_path = Path(base_path)
        if not self.base_path.is_dir():
            raise FileNotFoundError(f"No model base path {self.base_path}.")
        if isinstance(policy, (list, set, frozenset)):
            policy = tuple(sorted(policy))
        numbers = isinstance(policy, tuple) and policy and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in policy)
        if policy not in ("latest", "all") and not numbers:
            raise ValueError('policy must be "latest", "all" or a tuple of version numbers; '
                             f"got {policy!r}.")
        self.name = self.base_path.name  # in error messages, as TF Serving names the model
        self._root = Path(os.path.abspath(self.base_path))  # loads name it: errors shortened
        self.policy = policy
        self.poll_seconds = poll_seconds
        self._versions = {}  # number -> _Version; changed by the polling thread (and stop)
        self._lock = threading.Lock()  # held for dictionary operations only, never for a load
        self._changed = threading.Condition(self._lock)
        self._polls = 0  # scans finished
        self._stopping = threading.Event()
        self._thread = None

    # -- the polling thread -----------------------------------------------------------

    def start(self):
        """Start polling in a background thread; returns at once (see wait_until_ready)."""
        if self._thread is not None:
            raise RuntimeError("ModelVersions.start() was called twice.")
        self._thread = threading.Thread(target=self._run, name=f"versions-{self.name}", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop polling (after the load under way, if any) and drop every loaded version."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            for record in self._versions.values():
                if record.state != "END":
                    record.state, record.model = "END", None
            self._changed.notify_all()

    def _run(self):
        while not self._stopping.is_set():
            try:
                self._poll()
            except Exception:  # a fault here must not end the polling
                logger.exception("Polling %s failed.", self.base_path)
            with self._changed:
                self._polls += 1
                self._changed.notify_all()
            if self.poll_seconds <= 0 or self._stopping.wait(self.poll_seconds):
                return

    def _poll(self):
        try:
            present = self._scan()
        except OSError as error:  # e.g. a network file system away for a moment: keep serving
            logger.warning("Cannot list %s: %s", self.base_path, error)
            return
        tried = set()  # each version is tried at most once a poll
        while not self._stopping.is_set():
            to_load, to_unload = self._plan(present, skip=tried)
            with self._changed:
                for number in to_unload:
                    record = self._versions[number]
                    record.state, record.model = "END", None
                    logger.info("Unloaded version %d of %s.", number, self.name)
                for number in to_load:
                    self._versions[number] = _Version()  # START: waiting for its load
                self._changed.notify_all()
            if not to_load:
                return
            tried.add(to_load[0])
            self._load(to_load[0], present[to_load[0]])

    def _load(self, number, path):
        fingerprint = _fingerprint(path)
        with self._changed:
            self._versions[number] = _Version("LOADING", fingerprint=fingerprint)
            self._changed.notify_all()
        logger.info("Loading version %d of %s.", number, self.name)
        try:
            model = load_and_warm_up(path)
            record = _Version("AVAILABLE", model=model, fingerprint=fingerprint)
            logger.info("Version %d of %s is available.", number, self.name)
        except Exception as error:  # any failure is this version's, never the server's
            code = _ERROR_CODES.get(getattr(error, "error_code", None), "UNKNOWN")
            if isinstance(error, FileNotFoundError):
                code = "NOT_FOUND"
            message = f"Loading version folder {number}: {type(error).__name__}: "
            record = _Version("END", code, (message + self._relative(error))[:1000],
                              fingerprint=fingerprint)
            logger.warning("%s", record.error_message)
        with self._changed:
            self._versions[number] = record
            self._changed.notify_all()

    def _relative(self, error):
        """The error's message with version folders named relative to the base path."""
        # a TensorFlow error (a failing warm-up request): its own text, not TF's preamble
        message = error_message(error) if isinstance(error, tf.errors.OpError) else str(error)
        return message.replace(str(self._root) + os.sep, "")

    def _scan(self):
        """{number: path} of the version folders under the base path ("7" over "007")."""
        with os.scandir(self._root) as entries:
            folders = sorted((entry.name, entry.path) for entry in entries
                             if _VERSION.fullmatch(entry.name) and entry.is_dir())
        return {int(name): Path(path) for name, path in folders}

    def _plan(self, present, skip=()):
        """`(to_load, to_unload)`: versions to load next (newest first) and to unload now,
        given the folders `present`; failed versions whose folder is unchanged and those in
        `skip` are not loaded."""
        with self._lock:
            states = {number: (record.state, record.failed(), record.fingerprint)
                      for number, record in self._versions.items()}
        failed = {number for number, (_, is_failed, fingerprint) in states.items()
                  if is_failed and number in present
                  and _fingerprint(present[number]) == fingerprint}
        available = {number for number, (state, _, _) in states.items() if state == "AVAILABLE"}
        candidates = sorted(set(present) - failed - set(skip) - available, reverse=True)
        if self.policy == "latest":
            # The newest version that loads; the one serving stays until a newer one is AVAILABLE.
            serving = max(available & set(present), default=None)
            to_load = [v for v in candidates if serving is None or v > serving][:1]
            return to_load, available - {serving}
        wanted = set(present) if self.policy == "all" else set(present) & set(self.policy)
        return [v for v in candidates if v in wanted], available - wanted

    # -- what requests ask ----------------------------------------------------------------

    def wait_until_ready(self, timeout=None):
        """True once every version the policy wants (given the folders now present) has
        finished loading, AVAILABLE or END; False after `timeout` seconds, or at once when
        nothing polls (before start(), after stop())."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                polled = self._polls > 0
            if polled and self._ready():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                return False
            if remaining is not None and remaining <= 0:
                return False
            with self._changed:  # woken by each change; the timeout catches new folders
                self._changed.wait(0.2 if remaining is None else min(remaining, 0.2))

    def _ready(self):
        try:
            present = self._scan()
        except OSError:
            return False
        to_load, to_unload = self._plan(present)
        return not to_load and not to_unload

    def get(self, version=None):
        """`(number, loaded SavedModel)`: the newest AVAILABLE version, or `version` (a
        string from a request, or an int); RequestError(404) when it is not AVAILABLE."""
        number = None if version is None else self._number(version)
        with self._lock:
            if number is None:
                number = max((v for v, r in self._versions.items() if r.state == "AVAILABLE"),
                             default=None)
            record = self._versions.get(number)
            model = record.model if record is not None and record.state == "AVAILABLE" else None
        if model is None:
            request = f"Latest({self.name})"
            if version is not None:
                request = f"Specific({self.name}, {number})"
            raise RequestError(f"Servable not found for request: {request}", HTTPStatus.NOT_FOUND)
        return number, model

    def status(self, version=None):
        """TF Serving's model_version_status entries, newest first (only `version`'s when
        given); RequestError(404) for an unknown version or when there are none yet."""
        number = None if version is None else self._number(version)
        with self._lock:
            entries = [{"version": str(v), "state": r.state,
                        "status": {"error_code": r.error_code, "error_message": r.error_message}}
                       for v, r in sorted(self._versions.items(), reverse=True)
                       if number is None or v == number]
        if not entries:
            which = "any versions" if number is None else f"version {number}"
            raise RequestError(f"Could not find {which} of model {self.name}", HTTPStatus.NOT_FOUND)
        return entries

    def available(self):
        """The AVAILABLE version numbers, in increasing order."""
        with self._lock:
            return sorted(v for v, r in self._versions.items() if r.state == "AVAILABLE")

    def _number(self, version):
        """A request's version as an int, or RequestError(404) for what no version is named."""
        if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 10 ** 18:
            return version
        if isinstance(version, str) and _VERSION.fullmatch(version):
            return int(version)
        request = f"Specific({self.name}, {str(version)[:100]})"
        raise RequestError(f"Servable not found for request: {request}", HTTPStatus.NOT_FOUND)


def _fingerprint(path):
    """The names, sizes and modification times of the files in a version folder: a failed
    version is tried again when they change (a copy finished, a file replaced)."""
    files = []
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:  # removed meanwhile
                continue
            relative = os.path.relpath(os.path.join(folder, name), path)
            files.append((relative, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))
