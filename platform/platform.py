"""PlatformIO dev platform for mcutrain.

It declares no packages: the toolchain is Debian's arm-none-eabi-* on PATH and the board support
is in the project (firmware/bsp/), so nothing is fetched from PlatformIO's registry. The class name
follows PlatformIO's rule (platform.json "name" capitalised + "Platform").
"""

from platformio.public import PlatformBase


class McutrainPlatform(PlatformBase):
    """Nothing to override: the builder (builder/main.py) does all the work."""
