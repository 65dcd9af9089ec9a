"""bgm-export: BackgroundMattingV2 (MobileNetV2) to ONNX and OpenVINO IR, with proof of parity."""

__version__ = "0.1.0"


def _decline_vendor_telemetry() -> None:
    """OpenVINO's converter and NNCF send usage events to Google Analytics, each from a
    forked process, unless a consent file declines; a fork taken while another thread
    holds the name resolver's lock deadlocks, and the run hangs at exit (seen: ``bench``
    printed its tables and never returned). bgm-export sends nothing of its own, and
    declines theirs by the opt-out both honour in CI jobs (``disable_in_ci``), without
    touching the environment or the user's consent file."""
    try:
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
    except ImportError:  # (openvino without it sends nothing)
        return
    OptInChecker._run_in_ci = staticmethod(lambda: True)


_decline_vendor_telemetry()
