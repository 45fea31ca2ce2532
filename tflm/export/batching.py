"""Server-side request batching, as TF Serving's `--enable_batching` does it.

Concurrent requests to one signature of one version wait in a queue; batch threads take
whole requests, up to `max_batch_size` rows, concatenate them along the batch axis, run
the signature once and hand each request its own rows of the outputs. A batch runs as
soon as a thread is free and it is full or its first request has waited
`batch_timeout_micros`, so under load batches fill up while the threads are busy.

```python
batcher = Batcher(BatchingParameters(max_batch_size=32, batch_timeout_micros=1000))
outputs = batcher.run(("classify", 1), classify, {"texts": np.array([b"good"], object)})
batcher.close()
```

The parameters file has TF Serving's text format (`--batching_parameters_file`):

    max_batch_size { value: 32 }
    batch_timeout_micros { value: 1000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 4 }
"""

import collections
import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
from google.protobuf import (descriptor_pb2, descriptor_pool, message_factory, text_format,
                             wrappers_pb2)

from tflm.export.predict import RequestError


@dataclasses.dataclass
class BatchingParameters:
    """TF Serving's batching parameters, with its defaults (BasicBatchScheduler::Options).

    max_batch_size: the most rows in a batch (and in one request).
    batch_timeout_micros: how long the first request of a batch that is not full may wait
        for more; 0 runs a batch as soon as a thread is free.
    max_enqueued_batches: batches that may wait for a thread; past it requests are
        refused at once (503 / UNAVAILABLE).
    num_batch_threads: batches that run at the same time.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name == "batch_timeout_micros" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{field.name} must be an integer of at least {least}; "
                                 f"got {value!r}.")

    @classmethod
    def from_file(cls, path):
        """The parameters of a TF Serving batching_parameters_file (protobuf text format);
        a name left out keeps its default, an unknown name is an error."""
        message = _parameters_message()()
        try:
            text_format.Parse(Path(path).read_text(), message)
            return cls(**{field.name: value.value for field, value in message.ListFields()})
        except text_format.ParseError as error:
            names = ", ".join(field.name for field in dataclasses.fields(cls))
            raise ValueError(f"{path}: {error} The batching parameters are: {names}.") from None
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _parameters_message():
    """TF Serving's BatchingParameters message with the fields tflm serve supports (its proto
    is not in the tensorflow-serving-api wheel), built at run time so that protobuf's own
    text-format parser reads the file."""
    Field = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(name="batching_parameters.proto", syntax="proto3",
                                              package="tensorflow.serving",
                                              dependency=[wrappers.name])
    message = file.message_type.add(name="BatchingParameters")
    for number, field in enumerate(dataclasses.fields(BatchingParameters), start=1):
        message.field.add(name=field.name, number=number, type=Field.TYPE_MESSAGE,
                          type_name=".google.protobuf.Int64Value", label=Field.LABEL_OPTIONAL)
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


class _Task:
    """One request waiting for its rows of a batch's outputs."""

    def __init__(self, function, tensors, rows):
        self.function, self.tensors, self.rows = function, tensors, rows
        self.done = threading.Event()
        self.result = self.error = None


class _Batch:
    def __init__(self):
        self.tasks, self.rows, self.since = [], 0, time.monotonic()


class Batcher:
    """Merges concurrent `run` calls with the same key into one call of their function.

    `on_batch(key, rows, requests)`, if given, is called after each merged call (metrics).
    """

    def __init__(self, parameters, on_batch=None):
        self.parameters = parameters
        self.on_batch = on_batch
        self._queues = {}  # key -> deque of _Batch; the last one still takes requests
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"tflm-batch-{i}", daemon=True)
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key, function, tensors):
        """`function(tensors)` -> {name: array}, run in a batch with the concurrent calls of
        the same `key`. Only inputs that are all rank 1 ([B]) are batched; others run
        here at once. Blocks until the outputs are ready."""
        if not tensors or any(np.ndim(value) != 1 for value in tensors.values()):
            return function(tensors)
        rows = len(next(iter(tensors.values())))
        limit = self.parameters.max_batch_size
        if rows > limit:
            raise RequestError(f"The request has a batch of {rows}; batches hold at most {limit}.")
        task = _Task(function, tensors, rows)
        with self._condition:
            if self._closed:
                raise RequestError("The server is shutting down.", 503)
            batches = self._queues.setdefault(key, collections.deque())
            if not batches or batches[-1].rows + rows > limit:
                if len(batches) >= self.parameters.max_enqueued_batches:
                    raise RequestError("The batch scheduling queue to which this task was "
                                       "submitted is full.", 503)
                batches.append(_Batch())
            batches[-1].tasks.append(task)
            batches[-1].rows += rows
            self._condition.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def queue_depth(self):
        """Requests waiting for a batch thread."""
        with self._condition:
            return sum(len(batch.tasks) for batches in self._queues.values() for batch in batches)

    def close(self):
        """Refuse new requests, run those queued, stop the threads."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()

    # -- the batch threads ------------------------------------------------------------

    def _work(self):
        while True:
            with self._condition:
                key, batch, wait = self._take()
                while batch is None:
                    if self._closed and not self._queues:
                        return
                    self._condition.wait(wait)
                    key, batch, wait = self._take()
            self._run(batch)
            if self.on_batch is not None:
                self.on_batch(key, batch.rows, len(batch.tasks))

    def _take(self):
        """(key, batch, None): the oldest batch ready to run, removed from its queue; or
        (None, None, seconds until one is due). A batch is ready when full, when a later
        batch of its key exists, when its timeout has passed, or when closing."""
        now, timeout = time.monotonic(), self.parameters.batch_timeout_micros / 1e6
        ready, wait = None, None
        for key, batches in self._queues.items():
            first = batches[0]
            due = first.since + timeout
            if (self._closed or len(batches) > 1 or first.rows >= self.parameters.max_batch_size
                    or due <= now):
                if ready is None or first.since < self._queues[ready][0].since:
                    ready = key
            else:
                wait = due - now if wait is None else min(wait, due - now)
        if ready is None:
            return None, None, wait
        batches = self._queues[ready]
        batch = batches.popleft()
        if not batches:
            del self._queues[ready]
        return ready, batch, None

    def _run(self, batch):
        tasks = batch.tasks
        try:
            if len(tasks) == 1:
                tasks[0].result = tasks[0].function(tasks[0].tensors)
            else:
                self._run_merged(tasks, batch.rows)
        except Exception as error:  # handed to every request of the batch
            for task in tasks:
                task.error = task.error or error
        for task in tasks:
            task.done.set()

    def _run_merged(self, tasks, rows):
        merged = {name: np.concatenate([task.tensors[name] for task in tasks])
                  for name in tasks[0].tensors}
        try:
            outputs = tasks[0].function(merged)
            if any(np.ndim(value) == 0 or len(value) != rows for value in outputs.values()):
                raise RequestError("The outputs do not have a row for each input row.")
        except RequestError:
            # One request's inputs (say top_p = 0) fail the whole batch: run each alone, so
            # that only the requests at fault get the error.
            for task in tasks:
                try:
                    task.result = task.function(task.tensors)
                except Exception as error:
                    task.error = error
            return
        ends = np.cumsum([task.rows for task in tasks])[:-1]
        parts = {name: np.split(value, ends) for name, value in outputs.items()}
        for i, task in enumerate(tasks):
            task.result = {name: parts[name][i] for name in outputs}
