"""Tracing InspectionModel to ONNX: uint8 NHWC `frames` in, `anomaly_map` and `score` out.

The FP32 graph is the model as trained. The FP16 graph is the same model with its decoder
(and comparison head) in FP16 and explicit Casts around the FP32 islands (the encoder, whose
rounding would flip codes, the VQ distance and argmin, error map, smoothing, score), so the
precision lives in the graph: TensorRT >= 10 builds it strongly typed, and ONNX Runtime runs
it as written.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from edge.durable import write_synced
from train.pipeline import InspectionModel

log = logging.getLogger(__name__)

INPUT_NAME = "frames"
OUTPUT_NAMES = ("anomaly_map", "score")


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every Constant node's tensor into the graph initializers.

    TensorRT 10 requires `axes` of Reduce*/Slice/Pad to be initializers, not computed
    values; the tracer emits them as Constant nodes.
    """
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, name=node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def export_graph(model: InspectionModel, path: str | Path, opset: int) -> Path:
    """Trace `model` (eval mode) to `path` with a dynamic batch; check and clean the graph.
    The graph is built in memory and written once, synced (edge.durable.write_synced): a full
    disk is an OSError that names `path`, and a package moved into place after a power cut
    holds whole graphs."""
    path = Path(path)
    traced = io.BytesIO()
    cfg = model.cfg
    example = torch.zeros(2, *cfg.image_size, cfg.channels, dtype=torch.uint8)
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}}
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected here
        torch.onnx.export(
            model,
            (example,),
            traced,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = constants_to_initializers(onnx.load_from_string(traced.getvalue()))
    # The tracer leaves the map's non-batch dims symbolic; they are fixed by the input size.
    out_dims = {OUTPUT_NAMES[0]: (1, *cfg.image_size)}
    for output in proto.graph.output:
        for dim, value in zip(output.type.tensor_type.shape.dim[1:], out_dims.get(output.name, ()), strict=False):
            dim.Clear()
            dim.dim_value = value
    proto.producer_name = "vqad"
    proto.doc_string = "vqad inspection model: uint8 NHWC frames -> anomaly_map (N,1,H,W), score (N)"
    onnx.checker.check_model(proto, full_check=True)
    write_synced(path, proto.SerializeToString())
    return path
