"""The detector's classifier mode and the identity's embedding method, with small ONNX models
built here (known weights, so the right answer is known) and compiled by iotrt from source."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from iotrt.cli import main
from iotrt.node import Node
from iotrt.nodes.perception import detector, identity, inference
from iotrt.nodes.perception.gallery import Gallery
from iotrt.nodes.sensing.scene import DATA, DoorScene


def save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def colour_classifier(tmp_path):
    """Mean of each channel -> logits 4 * (r, g, b) -> softmax: says which colour dominates."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 4, "W")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 3])], [w, b])
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    return save(graph, tmp_path / "colour.onnx")


@pytest.fixture
def thumbnail_embedder(tmp_path):
    """A stand-in 'embedding': the aligned 112x112 crop averaged down to 7x7x3 = 147 values.
    Not a face model: it exercises compile, alignment, normalisation and cosine matching."""
    nodes = [helper.make_node("AveragePool", ["face"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
             helper.make_node("Flatten", ["pooled"], ["embedding"])]
    graph = helper.make_graph(
        nodes, "thumb", [helper.make_tensor_value_info("face", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 147])])
    return save(graph, tmp_path / "thumb.onnx")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_classifier_mode_names_the_dominant_colour(colour_classifier, tmp_path):
    node = Node.for_test(detector, params={
        "model": str(colour_classifier), "mode": "classifier", "backend": "numpy", "top_k": 2,
        "labels": str(tmp_path / "labels.txt"), "mean": [0, 0, 0], "std": [255, 255, 255],
        "max_age_ms": 0.0})
    for channel in (2, 0, 1):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., channel] = 255
        node.feed("image", frame)
    node.run()
    tops = [p.data["top"] for p in node.published]
    assert [t[0]["label"] for t in tops] == ["blue", "red", "green"]
    assert all(len(t) == 2 and t[0]["score"] > 0.9 for t in tops)
    # The model ends in a softmax: scores are its probabilities, not softmaxed twice.
    assert tops[0][0]["score"] == pytest.approx(np.exp(4) / (np.exp(4) + 2), abs=1e-4)


def test_classifier_refuses_a_non_image_model(tmp_path):
    flat = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    path = save(flat, tmp_path / "flat.onnx")
    params = {"model": str(path), "mode": "classifier", "backend": "numpy", "score_threshold": 0.5,
              "nms_iou": 0.3, "max_age_ms": 0.0, "top_k": 1, "labels": "", "mean": [0, 0, 0],
              "std": [1, 1, 1]}
    with pytest.raises(inference.DetectorError, match="image input"):
        inference.build(params, tmp_path / "models")


def test_embedding_method_end_to_end(thumbnail_embedder, tmp_path, blazeface_path):
    gallery = tmp_path / "g.npz"
    rc = main(["enroll", "owner", str(DATA / "owner.jpg"), "--gallery", str(gallery),
               "--method", "embedding", "--model", str(thumbnail_embedder), "--backend", "numpy"])
    assert rc == 0
    g = Gallery.load(gallery)
    assert g.method == "embedding" and g.features.shape == (1, 147)
    assert np.linalg.norm(g.features[0]) == pytest.approx(1.0, abs=1e-5)

    scene = DoorScene(640, 480)
    det = Node.for_test(detector, params={"model": str(blazeface_path), "backend": "numpy",
                                          "max_age_ms": 0.0})
    who = Node.for_test(identity, params={"gallery": str(gallery), "method": "embedding",
                                          "model": str(thumbnail_embedder), "backend": "numpy"})
    frame = scene.render(2.0)  # the owner at the door
    det.feed("image", frame, stamp_ns=1).run()
    who.feed("image", frame, stamp_ns=1).feed("detections", det.published[0].data, stamp_ns=1).run()
    face = who.published[0].data["faces"][0]
    assert face["name"] == "owner" and face["score"] > 0.9  # cosine of L2-normalised vectors

    # The identity node refuses a gallery made with a different embedding model.
    model = onnx.load(str(thumbnail_embedder))
    model.doc_string = "same graph, another file: another sha256"
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    bad = Node.for_test(identity, params={"gallery": str(gallery), "method": "embedding",
                                          "model": str(other), "backend": "numpy"})
    with pytest.raises(Exception, match="another embedding model"):
        bad.run()
