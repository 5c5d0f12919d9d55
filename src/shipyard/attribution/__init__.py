"""Attributions (explanations): per-input attributions for a served prediction, computed from the bundle with
ONNX Runtime (Integrated Gradients over the gradient graph `gradient` exports at optimize time;
occlusion or KernelSHAP from forward passes for models without one)."""
