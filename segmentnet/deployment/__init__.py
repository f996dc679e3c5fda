"""Deployment (Export.py): the ONNX export and the ONNX model that inference runs."""
