"""The ground floor: everything the line needs, torch-free.

A Jetson runs this package with numpy, OpenCV, pyzmq and TensorRT (or ONNX Runtime)
alone. train/ and export/ import the pieces they share with it (frame decoding and
resizing, the model package format, the typed-config loader) from here; nothing in
edge/ imports them back.
"""


def vqad_version() -> str:
    """The installed vqad's version, as pip names it ("unknown" in a source tree never installed):
    the daemon's start line, its heartbeat and its metrics say which vqad decides."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vqad")
    except PackageNotFoundError:
        return "unknown"
