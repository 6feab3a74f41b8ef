"""iotrt: a lightweight runtime for IoT devices that see and act."""

__version__ = "0.1.0"
