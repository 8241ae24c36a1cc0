"""The host side: the serial protocol (protocol.py), boards to talk to (device.py; qemu.py and
kept_board.py for the emulated one), and the `mcutrain` command line (cli.py, layers.py).
"""
