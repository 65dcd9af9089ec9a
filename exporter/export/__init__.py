"""Exporters: torch model -> ONNX -> OpenVINO IR."""


def _decline_vendor_telemetry() -> None:
    """OpenVINO's converter and NNCF, which only the exporters use, send usage events to
    Google Analytics, each from a forked process, unless a consent file declines; a fork
    taken while another thread holds the name resolver's lock deadlocks, and the run hangs
    at exit (seen: ``bench`` printed its tables and never returned). bgm-export sends
    nothing of its own, and declines theirs by the opt-out both honour in CI jobs
    (``disable_in_ci``), without touching the environment or the user's consent file. Here,
    not at the package's import: it costs 35 ms, which the deployment side need not pay."""
    try:
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
    except ImportError:  # (openvino without it sends nothing)
        return
    OptInChecker._run_in_ci = staticmethod(lambda: True)


_decline_vendor_telemetry()
