"""Export a dense-only Keras model to ONNX, and check the export against Keras.

The serving image carries ONNX Runtime instead of TensorFlow. The supported layers are the ones a dense-only
classifier is made of; anything else is refused by name rather than exported wrongly. BatchNormalization is
folded into the Dense layer before it, so the served graph is a few MatMul/Add/activation nodes.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# The last hidden layer's output, what the final Dense layer reads: a second graph output, from which the
# out-of-distribution step adds the feature distance (training/uncertainty.py).
FEATURES_NAME = "features"
# Layers that do nothing at inference time.
IDENTITY_LAYERS = (
    "InputLayer", "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
)


class ExportError(Exception):
    """The model holds something this exporter cannot express faithfully."""


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.current = INPUT_NAME
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, *extra_inputs: str, hint: str | None = None, **attrs) -> None:
        output = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, [self.current, *extra_inputs], [output], **attrs))
        self.current = output

    def activation(self, name: str, layer_name: str) -> None:
        if name in ("linear", None):
            return
        if name in ("relu", "sigmoid", "tanh", "elu", "selu", "softplus"):
            self.op({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "elu": "Elu", "selu": "Selu",
                     "softplus": "Softplus"}[name])
        elif name == "softmax":
            self.op("Softmax", axis=-1)
        elif name in ("swish", "silu"):
            source = self.current
            self.op("Sigmoid")
            self.nodes.append(helper.make_node("Mul", [source, self.current], [out := self._name("swish")]))
            self.current = out
        else:
            raise ExportError(f"layer {layer_name!r}: activation {name!r} is not supported")


def _activation_name(activation) -> str:
    return getattr(activation, "__name__", str(activation))


class _PendingDense:
    """A Dense layer not yet written, so that a BatchNormalization or an activation after it can be folded in."""

    def __init__(self, graph: _GraphBuilder):
        self.graph = graph
        self.layer: tuple[np.ndarray, np.ndarray, str, str] | None = None  # kernel, bias, activation, name

    def start(self, layer) -> None:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
        self.layer = (kernel, bias, _activation_name(layer.activation), layer.name)

    def absorbs(self, layer, kind: str) -> bool:
        """Fold ``layer`` into the pending Dense when it can be: a BatchNormalization or an activation right after
        a Dense without an activation of its own."""
        if self.layer is None or self.layer[2] != "linear":
            return False
        kernel, bias, _, name = self.layer
        if kind == "BatchNormalization":
            # y = gamma * (xW + b - mean) / sqrt(var + eps) + beta, folded into W and b.
            scale, shift = _batchnorm_affine(layer)
            self.layer = (kernel * scale, bias * scale + shift, "linear", name)
            return True
        if kind == "Activation":
            self.layer = (kernel, bias, _activation_name(layer.activation), name)
            return True
        return False

    def flush(self) -> None:
        if self.layer is not None:
            kernel, bias, activation, name = self.layer
            self.graph.op("MatMul", self.graph.constant("kernel", kernel))
            if bias.any():  # a factor of a low-rank layer has none: its product goes straight into the next MatMul
                self.graph.op("Add", self.graph.constant("bias", bias))
            self.graph.activation(activation, name)
            self.layer = None


def keras_to_onnx(model: keras.Model) -> onnx.ModelProto:
    """A chain of Flatten/Normalization/Rescaling/Dense/BatchNormalization/activation/dropout layers as ONNX."""
    graph = _GraphBuilder()
    dense = _PendingDense(graph)
    previous = None
    last_dense = max((i for i, layer in enumerate(model.layers) if type(layer).__name__ == "Dense"), default=-1)
    for index, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if previous is not None and layer.input is not previous.output:
            raise ExportError(f"layer {layer.name!r} does not take the previous layer's output: only chains export")
        previous = layer
        if kind in IDENTITY_LAYERS or dense.absorbs(layer, kind):
            continue
        dense.flush()
        if kind == "Dense":
            if index == last_dense:
                graph.nodes.append(helper.make_node("Identity", [graph.current], [FEATURES_NAME]))
                graph.current = FEATURES_NAME
            dense.start(layer)
        else:
            _write_layer(graph, layer, kind)
    dense.flush()
    graph.nodes.append(helper.make_node("Identity", [graph.current], [OUTPUT_NAME]))
    return _onnx_model(graph, model)


def _write_layer(graph: _GraphBuilder, layer, kind: str) -> None:
    """Every supported layer but Dense, as ONNX nodes; anything else is refused by name."""
    if kind == "Flatten":
        graph.op("Flatten", axis=1)
    elif kind == "Normalization":
        mean = keras.ops.convert_to_numpy(layer.mean)
        std = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance)), keras.config.epsilon())
        graph.op("Sub", graph.constant("mean", mean.reshape(mean.shape[1:])))
        graph.op("Div", graph.constant("std", std.reshape(std.shape[1:])))
    elif kind == "Rescaling":
        graph.op("Mul", graph.constant("scale", np.asarray(layer.scale)))
        graph.op("Add", graph.constant("offset", np.asarray(layer.offset)))
    elif kind == "BatchNormalization":
        scale, shift = _batchnorm_affine(layer)
        graph.op("Mul", graph.constant("bn_scale", scale))
        graph.op("Add", graph.constant("bn_shift", shift))
    elif kind == "Activation":
        graph.activation(_activation_name(layer.activation), layer.name)
    elif kind == "ReLU" and layer.max_value is None and not layer.negative_slope and not layer.threshold:
        graph.op("Relu")
    elif kind == "Softmax":
        graph.op("Softmax", axis=-1)
    else:
        raise ExportError(f"layer {layer.name!r} of type {kind} is not supported by the ONNX exporter")


def _onnx_model(graph: _GraphBuilder, model: keras.Model) -> onnx.ModelProto:
    input_shape = ["batch", *model.input_shape[1:]]
    output_shape = ["batch", model.output_shape[-1]]
    onnx_graph = helper.make_graph(
        graph.nodes,
        model.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, output_shape),
         *([helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["batch", _features_width(model)])]
           if any(node.output[0] == FEATURES_NAME for node in graph.nodes) else [])],
        graph.initializers,
    )
    onnx_model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="training.export"
    )
    onnx_model.ir_version = 8  # readable by every ONNX Runtime release since 1.10
    onnx.checker.check_model(onnx_model)
    return onnx_model


def _features_width(model: keras.Model) -> int:
    return int([layer for layer in model.layers if type(layer).__name__ == "Dense"][-1].kernel.shape[0])


def _batchnorm_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    gamma = keras.ops.convert_to_numpy(layer.gamma) if layer.scale else 1.0
    beta = keras.ops.convert_to_numpy(layer.beta) if layer.center else 0.0
    mean = keras.ops.convert_to_numpy(layer.moving_mean)
    variance = keras.ops.convert_to_numpy(layer.moving_variance)
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def onnx_probabilities(onnx_bytes: bytes, inputs: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Run the exported graph with ONNX Runtime, as the service will."""
    return onnx_outputs(onnx_bytes, inputs, OUTPUT_NAME, batch_size)


def onnx_outputs(onnx_bytes: bytes, inputs: np.ndarray, output: str, batch_size: int = 1000) -> np.ndarray:
    """One named output of the graph over ``inputs``, in batches."""
    return onnx_run(onnx_bytes, inputs, [output], batch_size)[0]


def onnx_run(onnx_bytes: bytes, inputs: np.ndarray, outputs: list[str], batch_size: int = 1000) -> list[np.ndarray]:
    """Several named outputs of the graph over ``inputs``, from one pass in batches."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    batches = [session.run(outputs, {INPUT_NAME: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return [np.concatenate([batch[k] for batch in batches]) for k in range(len(outputs))]
