"""The model format: the layer below both the compiler (which writes it) and the engine (which
reads and runs it), so neither imports the other.

- `ir`: the IR (ops, tensors, the graph of a compiled model);
- `kernels`: the reference meaning of every op, in numpy (constant folding, shape inference,
  and the engine's fallback kernels);
- `artifact`: the `.iotm` file (magic, version, layout, read and write) and its memory plan;
- `quantized`: how int8 weights are stored and restored;
- `preprocessing`: the input preprocessing a caller states and an artifact records;
- `onnxpayload`: the "onnx" payload embedded for the framework backends;
- `errors`: the errors of the format and of running a model.

numpy only: all of it ships to the device.
"""
