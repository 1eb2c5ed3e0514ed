"""mpcc: compile ONNX models to secure three-party computation plans and run them."""

__version__ = "0.1.0"
