"""Export: a trained run -> a self-contained model package (ONNX FP32, ONNX FP16, model.json),
and on the target, a TensorRT FP16 engine built from it."""
