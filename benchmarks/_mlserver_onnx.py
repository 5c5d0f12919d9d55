"""A minimal ONNX Runtime runtime for MLServer (which ships none), for serve_bench's MLServer row.

Imported by MLServer only, in serve_bench's own virtual environment (`benchmarks/.mlserver-venv`),
never by shipyard. Like MLServer's own runtimes (mlserver-sklearn, mlserver-xgboost) it runs the
model inline in `predict`: decode the V2 request with MLServer's codecs, one `session.run`,
encode the outputs. The session is built like shipyard's: one intra-op and one inter-op thread,
sequential execution. `parameters.uri` in model-settings.json is the path of the .onnx file.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        uri = self.settings.parameters.uri if self.settings.parameters else None
        if not uri:
            raise ValueError("model-settings.json needs parameters.uri: the .onnx file")
        self._session = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for i, request_input in enumerate(payload.inputs):
            name = request_input.name if request_input.name in self._inputs else self._inputs[i]
            feeds[name] = np.asarray(NumpyCodec.decode_input(request_input), dtype=np.float32)
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name, model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, np.asarray(r))
                     for name, r in zip(self._outputs, results, strict=True)])
