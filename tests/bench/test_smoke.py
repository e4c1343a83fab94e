"""The benchmark harness, run at tiny sizes so that `make test` keeps it working.

No timing is asserted (the machine is shared and noisy): only that every measurement ran
through the daemon and produced a well-formed row. portgate always runs; miniupnpd too when
Debian's miniupnpd-nftables is installed (`make bench` installs it; the test never does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.daemons import MINIUPNPD
from bench.run import run, smoke_options
from tests.netlab import require_root

pytestmark = [pytest.mark.netns]


def test_the_harness_measures_each_metric_at_tiny_sizes(tmp_path: Path) -> None:
    require_root()
    daemons = ("portgate", "miniupnpd") if os.path.exists(MINIUPNPD) else ("portgate",)
    lines: list[str] = []
    json_path, md_path, data = run(
        smoke_options(), daemons, tmp_path / "results", install=False, log=lines.append
    )
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(data))
    text = md_path.read_text()
    assert "| metric | unit | portgate | miniupnpd | advantage |" in text
    assert "## portgate's targets" in text

    pg = data["daemons"]["portgate"]
    assert pg["events"] == [], pg["events"]
    assert pg["kernel_count"] == {"0": 0, "30": 30}
    assert pg["start_with"]["30"]["first_kernel_count_seen"] == 30
    assert not pg["start_with"]["30"]["timed_out"]
    for size in ("0", "30"):
        for op in ("add", "get", "delete"):
            assert pg["upnp"][size][op]["n"] == 3, pg["upnp"][size][op]
            assert pg["upnp"][size][op]["failures"] == {}
        assert pg["rss_kib"][size] > 0
        assert pg["upnp_twin"][size]["add"]["n"] == 3, pg["upnp_twin"][size]
    assert pg["generic_walk"]["30"]["complete"], pg["generic_walk"]
    assert pg["list"]["30"]["complete"], pg["list"]
    for kind in ("natpmp", "pcp"):
        for mode in ("refresh", "churn"):
            result = pg["pmp"][kind][mode]
            assert result["ok"] > 0 and result["errors"] == [{}, {}], result
    for role, mappings in (("loaded", 30), ("baseline", 1)):
        traffic = pg["traffic"][role]
        assert traffic["mappings"] >= mappings, traffic
        assert traffic["delivered"][0] > 0, traffic
        assert traffic["throughput_bps"][0] > 0, traffic

    assert pg["traffic"]["loaded"]["new_flows_per_s_ratio"] is not None
    assert pg["traffic_aa"]["loaded"]["mappings"] >= 1
    rows = {row["metric"]: row for row in data["rows"]}
    assert rows["UPnP AddPortMapping median at 30"]["portgate"] is not None
    # a target measured against miniupnpd has no verdict (None) when miniupnpd is not here
    verdicts = {True, False} if "miniupnpd" in daemons else {True, False, None}
    assert {t["met"] for t in data["targets"]} <= verdicts

    if "miniupnpd" in daemons:
        mu = data["daemons"]["miniupnpd"]
        assert mu["kernel_count"] == {"0": 0, "30": 30}
        assert mu["upnp"]["30"]["add"]["n"] == 3
        assert mu["generic_walk"]["30"]["complete"], mu["generic_walk"]
        assert mu["pmp"]["natpmp"]["refresh"]["ok"] > 0
        assert mu["traffic"]["loaded"]["delivered"][0] > 0
        assert rows["UPnP AddPortMapping median at 30"]["advantage"] is not None
