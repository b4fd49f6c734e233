"""ONNX export of a trained run and inference with ONNX Runtime on CPU.

export_onnx("runs/demo", "exports/demo")                     # fp32 graphs
export_onnx("runs/demo", "exports/demo-int8", quantize="int8")
OnnxPredictor.from_dir("exports/demo").predict("sst", ["A gorgeous, moving film."])
"""

from minbert.onnx.export import ExportError, export_onnx
from minbert.onnx.predictor import OnnxFolderError, OnnxPredictor

__all__ = ["ExportError", "OnnxFolderError", "OnnxPredictor", "export_onnx"]
