"""Attributions (`shipyard explain`, `/explain`): why a model answered what it did, computed from
the bundle with ONNX Runtime — Integrated Gradients over the gradient graph `gradient` exports at
optimize time; occlusion or KernelSHAP from forward passes for models without one."""
