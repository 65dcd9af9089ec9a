"""bgm-export declines OpenVINO's and NNCF's usage telemetry wherever it may convert or quantize
(``exporter.export._decline_vendor_telemetry``).
Checked where the libraries decide, in a process without this suite's ``CI=true``: nothing
is sent either way (importing OpenVINO's converter would send an event if consent were given)."""

import os
import subprocess
import sys

ASK = (
    "from openvino_telemetry.utils.opt_in_checker import OptInChecker; "
    "print(OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True).name)"
)


def _decision(first: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    result = subprocess.run(
        [sys.executable, "-c", f"{first}; {ASK}"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_vendor_telemetry_is_declined():
    # Alone the libraries find no consent file and send (NO_FILE), unless this machine's
    # user has declined (DECLINED); with bgm-export's exporters imported (the only modules
    # that call the converter or NNCF) they decline either way.
    assert _decision("import os") in ("NO_FILE", "DECLINED", "ACCEPTED")
    assert _decision("import exporter.export.openvino") == "DECLINED"
    assert _decision("import exporter.export.int8") == "DECLINED"
