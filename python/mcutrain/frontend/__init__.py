"""The front end: the .tflite flatbuffer, checked and read into the graph IR (graph.py), with
ModelError, the one-line refusal every later stage raises. The operators' options tables are
declared by their op modules into options.py, which the reader asks.
"""
