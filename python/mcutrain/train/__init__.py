"""Compile a training step: the scheme (scheme.py) selects what trains, training_graph.py derives
the pruned backward schedule, state layout and arena plan, codegen.py emits it, report.py sizes
it; reference.py (numpy, bit-exact with the firmware) and fp32_reference.py (TensorFlow float)
are its references.
"""
