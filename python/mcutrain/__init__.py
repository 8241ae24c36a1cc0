"""mcutrain: compile an int8 TFLite model into firmware that runs (and later trains) it on a
Cortex-M7 within 256 KB, and drive that firmware from the host over serial."""

__version__ = "0.1.0"
