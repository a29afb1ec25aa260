"""Every message fragment docs/troubleshooting.md explains still exists in the code that prints it."""
from __future__ import annotations

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_documented_message_is_printed_by_the_code():
    doc = open(os.path.join(REPO, "docs", "troubleshooting.md"), encoding="utf-8").read()
    code = "".join(open(p, encoding="utf-8").read()
                   for p in glob.glob(os.path.join(REPO, "sync_gateway", "**", "*.py"), recursive=True))
    code += "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(REPO, "hpc", "*.py")))
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert len(rows) >= 15
    missing = []
    for row in rows:
        for fragment in re.findall(r"`([^`]+)`", row.split("|")[1]):
            # the code's own text; errno texts come from the OS, CERTIFICATE_VERIFY_FAILED from OpenSSL
            if fragment.startswith("[Errno") or fragment in ("CERTIFICATE_VERIFY_FAILED", "timed out",
                                                             "unable to get local issuer certificate"):
                continue
            if fragment not in code:
                missing.append(fragment)
    assert not missing, f"documented messages no longer printed anywhere: {missing}"
