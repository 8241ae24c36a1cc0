"""Compile an inference build: prepare every operator (compiler.py), plan one static arena
(memory_plan.py), emit straight-line C++ (codegen.py), size it against the board (report.py,
firmware_size.py); reference.py runs the prepared model in numpy.
"""
