"""ONNX models: reading and running them (io), their inputs (inputs), SRC parsing and torch
factories (source), shape specs and profiles (shapes)."""
