"""What the training tests share: `tflm train` from the shell on a small, fast run, and the
TensorBoard scalars it writes."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


class TrainCommand:
    """`tflm train` as a user runs it, with a model and run small enough for seconds: eval
    every 15 steps, checkpoints every 10, so checkpoints fall in the middle of epochs.
    `overrides` ("section.key=value") come after these and win."""

    SMALL = [
        "train.max_minutes=null", "train.max_steps=45", "train.eval_every=15",
        "train.eval_batches=2", "output.checkpoint_every=10", "output.log_every=1",
        "output.sample_every=0", "output.sample_tokens=10", "data.seq_len=32",
        "model.num_layers=1", "model.hidden_dim=32", "model.intermediate_dim=64",
        "optimizer.warmup_steps=5", "train.verbose=0",
    ]

    def overrides(self, output_dir, *overrides):
        return [*self.SMALL, f"output.dir={output_dir}", *overrides]

    def args(self, output_dir, *overrides):
        args = [sys.executable, "-m", "tflm", "train"]
        for override in self.overrides(output_dir, *overrides):
            args += ["--set", override]
        return args

    def run(self, output_dir, *overrides, cwd=ROOT):
        """The finished command (`returncode`, `stdout`, `stderr`)."""
        return subprocess.run(self.args(output_dir, *overrides), cwd=cwd, capture_output=True,
                              text=True, timeout=300)

    def start(self, output_dir, *overrides, env=None):
        """The running command, its stderr in its stdout."""
        return subprocess.Popen(self.args(output_dir, *overrides), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def tflm_train():
    return TrainCommand()


def read_scalars(log_dir, tag):
    """step -> value of a TensorBoard scalar; a later write of a step replaces an earlier."""
    import tensorflow as tf

    values = []
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.wall_time, event.step, float(tf.make_ndarray(value.tensor))))
    return {step: value for _, step, value in sorted(values)}


@pytest.fixture(scope="session")
def scalars():
    """`scalars(log_dir, tag)`: step -> value of a scalar a run wrote to TensorBoard."""
    return read_scalars
