"""ModelVersions loads, serves and unloads the versions under a base path as TF Serving does."""

import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from tflm.export import saved_model, versions
from tflm.export.predict import RequestError
from tflm.export.saved_model import write_warmup_requests
from tflm.export.versions import ModelVersions

READY = 120  # seconds: a deadline, far above a load of the tiny export


@pytest.fixture(scope="module")
def export(classifier, tmp_path_factory):
    """A version folder of the tiny classifier, copied to make versions."""
    return saved_model(classifier, tmp_path_factory.mktemp("source"), warmup_batch_size=1)


def add(export, base, name):
    """Put a copy of `export` at base/name the way an export does: written aside, renamed in."""
    shutil.copytree(export, base / f".tmp-{name}-1")
    (base / f".tmp-{name}-1").rename(base / str(name))
    return base / str(name)


@pytest.fixture
def loads(monkeypatch):
    """The version folders loaded, in order (the real loads run)."""
    names, load = [], versions.load_and_warm_up

    def counting(path):
        names.append(path.name)
        return load(path)

    monkeypatch.setattr(versions, "load_and_warm_up", counting)
    return names


@pytest.fixture
def running():
    """start(base, ...) -> a started ModelVersions, stopped after the test."""
    started = []

    def start(base, policy="latest"):
        started.append(ModelVersions(base, policy=policy, poll_seconds=0.05))
        started[-1].start()
        return started[-1]

    yield start
    for model_versions in started:
        model_versions.stop()


def states(model_versions):
    return {int(entry["version"]): entry["state"] for entry in model_versions.status()}


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_bad_versions_next_to_a_good_one(export, tmp_path, loads, running, policy):
    base = tmp_path / "sentiment"
    base.mkdir()
    add(export, base, 1)
    truncated = add(export, base, 2) / "saved_model.pb"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (base / "3").mkdir()
    (base / "3" / "notes.txt").write_text("not a SavedModel")
    # 4: a warm-up request that fails (numbers for the strings it takes)
    write_warmup_requests(add(export, base, 4), [("classify", {"texts": tf.constant([1])})])
    for ignored in ("²", "１", ".tmp-5-123", "latest"):  # not version folders, though loadable
        shutil.copytree(export, base / ignored)

    model_versions = running(base, policy)
    assert model_versions.wait_until_ready(timeout=READY)
    status = model_versions.status()
    assert [entry["version"] for entry in status] == ["4", "3", "2", "1"]
    assert status[3] == {"version": "1", "state": "AVAILABLE",
                         "status": {"error_code": "OK", "error_message": ""}}
    for entry in status[:3]:
        assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
        message = entry["status"]["error_message"]
        assert f"version folder {entry['version']}" in message and str(tmp_path) not in message
    assert "saved_model.pb" in status[1]["status"]["error_message"]  # what is wrong with 2
    assert model_versions.status("2") == [status[2]]
    number, model = model_versions.get()
    assert number == 1 and model_versions.get("1")[1] is model
    texts = tf.constant(["a good movie"])
    expected = tf.saved_model.load(str(export)).signatures["classify"](texts=texts)
    np.testing.assert_allclose(model.signatures["classify"](texts=texts)["probabilities"],
                               expected["probabilities"], atol=1e-6)
    with pytest.raises(RequestError) as raised:
        model_versions.get("2")
    assert raised.value.status == 404

    # A failed version is tried again once its folder changes, not at every poll.
    del loads[:]
    shutil.copy(export / "saved_model.pb", truncated)
    assert model_versions.wait_until_ready(timeout=READY)
    assert loads == ["2"] and model_versions.get() == (2, model_versions.get("2")[1])
    add(export, base, 5)
    assert model_versions.wait_until_ready(timeout=READY)
    assert loads == ["2", "5"]
    older = "AVAILABLE" if policy == "all" else "END"
    assert states(model_versions) == {5: "AVAILABLE", 4: "END", 3: "END", 2: older, 1: older}
    assert model_versions.available() == ([1, 2, 5] if policy == "all" else [5])


@pytest.mark.parametrize("policy, served", [
    ("latest", [[1], [2], [3]]),
    ("all", [[1], [1, 2], [1, 2, 3]]),
    ((1, 3), [[1], [1], [1, 3]]),
])
def test_new_versions_are_loaded_as_the_policy_says(export, tmp_path, running, policy, served):
    add(export, tmp_path, 1)
    model_versions = running(tmp_path, policy)
    for number, expected in zip([1, 2, 3], served):
        if number > 1:
            add(export, tmp_path, number)
        assert model_versions.wait_until_ready(timeout=READY)
        assert model_versions.available() == expected
        assert model_versions.get()[0] == expected[-1]
        for entry in model_versions.status():  # the others were never loaded or are unloaded
            if int(entry["version"]) not in expected:
                assert entry["state"] == "END" and entry["status"]["error_code"] == "OK"
    if policy == (1, 3):
        assert [entry["version"] for entry in model_versions.status()] == ["3", "1"]


def test_a_request_during_a_load_is_answered_by_the_serving_version(export, tmp_path, monkeypatch,
                                                                    running):
    loading, release = threading.Event(), threading.Event()
    load = versions.load_and_warm_up

    def slow(path):
        if path.name == "2":
            loading.set()
            release.wait(timeout=READY)
        return load(path)

    monkeypatch.setattr(versions, "load_and_warm_up", slow)
    add(export, tmp_path, 1)
    model_versions = running(tmp_path)
    assert model_versions.wait_until_ready(timeout=READY)
    add(export, tmp_path, 2)
    try:
        assert loading.wait(timeout=READY)
        answers = []
        request = threading.Thread(
            target=lambda: answers.append((model_versions.get()[0], states(model_versions))))
        request.start()
        request.join(timeout=READY)  # a request waiting for the load would wait for `release`
        assert answers == [(1, {2: "LOADING", 1: "AVAILABLE"})]
        assert not model_versions.wait_until_ready(timeout=0.1)
    finally:
        release.set()
    assert model_versions.wait_until_ready(timeout=READY)
    assert model_versions.get()[0] == 2 and states(model_versions) == {2: "AVAILABLE", 1: "END"}


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_a_removed_version_is_unloaded(export, tmp_path, running, policy):
    add(export, tmp_path, 1)
    add(export, tmp_path, 2)
    model_versions = running(tmp_path, policy)
    assert model_versions.wait_until_ready(timeout=READY)
    shutil.rmtree(tmp_path / "2")
    assert model_versions.wait_until_ready(timeout=READY)
    assert model_versions.available() == [1]  # under "latest", 1 serves again
    assert model_versions.status("2") == [
        {"version": "2", "state": "END", "status": {"error_code": "OK", "error_message": ""}}]
    with pytest.raises(RequestError):
        model_versions.get("2")


@pytest.fixture(scope="module")
def served(export, tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    add(export, base, 1)
    model_versions = ModelVersions(base, poll_seconds=0.05)
    model_versions.start()
    assert model_versions.wait_until_ready(timeout=READY)
    yield model_versions
    model_versions.stop()


@pytest.mark.parametrize("version", ["²", "１", "1" * 5000, "9" * 19, "-1", "1.0", "0x1", " 1", "",
                                     "v1", "2", 2])
def test_versions_that_are_not_served_are_404(served, version):
    for ask in (served.get, served.status):
        with pytest.raises(RequestError) as raised:
            ask(version)
        assert raised.value.status == 404 and raised.value.code == "NOT_FOUND"
        assert len(str(raised.value)) < 200
    assert served.get("1")[0] == served.get("01")[0] == served.get(1)[0] == 1


def test_stop_waits_for_the_load_under_way_and_unloads(export, tmp_path, monkeypatch):
    loading, release = threading.Event(), threading.Event()
    load = versions.load_and_warm_up

    def slow(path):
        loading.set()
        release.wait(timeout=READY)
        return load(path)

    monkeypatch.setattr(versions, "load_and_warm_up", slow)
    add(export, tmp_path, 1)
    model_versions = ModelVersions(tmp_path, poll_seconds=0.05)
    model_versions.start()
    try:
        assert loading.wait(timeout=READY)
        stopping = threading.Thread(target=model_versions.stop)
        stopping.start()
        stopping.join(timeout=1)
        assert stopping.is_alive()  # joining the polling thread, which is still loading
    finally:
        release.set()
    stopping.join(timeout=READY)
    assert not stopping.is_alive()
    assert not [t for t in threading.enumerate() if t.name == f"versions-{tmp_path.name}"]
    assert model_versions.available() == [] and states(model_versions) == {1: "END"}
    with pytest.raises(RequestError):
        model_versions.get()


def test_bad_arguments(tmp_path):
    for policy in ("newest", (), ("1",), (True,), (-1,)):
        with pytest.raises(ValueError, match="policy"):
            ModelVersions(tmp_path, policy=policy)
    with pytest.raises(FileNotFoundError):
        ModelVersions(tmp_path / "missing")
