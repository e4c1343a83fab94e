"""The run's tables: one JSON document and one markdown page, both daemons side by side.

"advantage" is how many times better portgate is on a row: miniupnpd / portgate where lower is
better (times, memory), portgate / miniupnpd where higher is better (rates, throughput). A
value below 1 means miniupnpd did better.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    unit: str
    better: str  # "lower" or "higher"
    portgate: float | None
    miniupnpd: float | None
    portgate_note: str = ""
    miniupnpd_note: str = ""

    @property
    def advantage(self) -> float | None:
        pg, mu = self.portgate, self.miniupnpd
        if pg is None or mu is None or pg <= 0 or mu <= 0:
            return None
        return mu / pg if self.better == "lower" else pg / mu

    def as_json(self) -> Json:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "better": self.better,
            "portgate": self.portgate,
            "miniupnpd": self.miniupnpd,
            "portgate_note": self.portgate_note,
            "miniupnpd_note": self.miniupnpd_note,
            "advantage": self.advantage,
        }


def _get(data: Json, *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _median(values: Any) -> float | None:
    numbers = [float(v) for v in (values or []) if v is not None]
    return statistics.median(numbers) if numbers else None


def traffic_median(result: Json, role: str, key: str) -> float | None:
    """Median over the runs of ``role`` ("loaded" or "baseline") of the paired traffic."""
    return _median(_get(result, "traffic", role, key))


def paired_ratio(result: Json, size: int, op: str) -> float | None:
    """The median of ``op`` at ``size`` over the median of the twin holding no mappings,
    measured in the same interleaved rounds."""
    loaded = _get(result, "upnp", str(size), op, "median_ms")
    alone = _get(result, "upnp_twin", str(size), op, "median_ms")
    if loaded is None or alone is None or alone <= 0:
        return None
    return float(loaded) / float(alone)


def _enum_note(item: Json | None) -> str:
    if not item:
        return ""
    parts = [f"{item.get('entries')}/{item.get('expected')} entries"]
    if item.get("crashed"):
        parts.append("daemon crashed")
    elif "well_formed" in item and not item.get("well_formed") and item.get("problem"):
        parts.append(str(item["problem"])[:60])
    elif item.get("end") not in (None, "713"):
        parts.append(f"ended: {item['end']}")
    return ", ".join(parts)


def build_rows(daemons: Json, options: Json) -> list[Row]:
    pg: Json = daemons.get("portgate", {})
    mu: Json = daemons.get("miniupnpd", {})
    rows: list[Row] = []

    def row(metric: str, unit: str, better: str, path: tuple[str, ...], scale: float = 1) -> None:
        a, b = _get(pg, *path), _get(mu, *path)
        rows.append(
            Row(
                metric,
                unit,
                better,
                None if a is None else float(a) * scale,
                None if b is None else float(b) * scale,
            )
        )

    for size in options["sizes"]:
        for op, action in (
            ("add", "AddPortMapping"),
            ("get", "GetSpecificPortMappingEntry"),
            ("delete", "DeletePortMapping"),
        ):
            for stat in ("median", "p90"):
                row(
                    f"UPnP {action} {stat} at {size:,}",
                    "ms",
                    "lower",
                    ("upnp", str(size), op, f"{stat}_ms"),
                )
    for size in options["sizes"]:
        if size == 0:
            continue
        for op, action in (
            ("add", "AddPortMapping"),
            ("get", "GetSpecificPortMappingEntry"),
            ("delete", "DeletePortMapping"),
        ):
            rows.append(
                Row(
                    f"UPnP {action} median at {size:,} over at 0 (a twin, same minutes)",
                    "x",
                    "lower",
                    paired_ratio(pg, size, op),
                    paired_ratio(mu, size, op),
                )
            )
    for size in options["enum_sizes"]:
        key = str(size)
        a, b = _get(pg, "generic_walk", key), _get(mu, "generic_walk", key)
        rows.append(
            Row(
                f"GetGenericPortMappingEntry walk to 713 at {size:,}",
                "s",
                "lower",
                a["seconds"] if a and a.get("end") == "713" else None,
                b["seconds"] if b and b.get("end") == "713" else None,
                _enum_note(a),
                _enum_note(b),
            )
        )
        a, b = _get(pg, "list", key), _get(mu, "list", key)
        rows.append(
            Row(
                f"GetListOfPortMappings, all entries, at {size:,}",
                "s",
                "lower",
                a["seconds"] if a and a.get("well_formed") else None,
                b["seconds"] if b and b.get("well_formed") else None,
                _enum_note(a),
                _enum_note(b),
            )
        )
    size = options["pmp_size"]
    for kind, label in (("natpmp", "NAT-PMP"), ("pcp", "PCP")):
        for mode, text in (("refresh", "map/refresh"), ("churn", "map+delete churn")):
            row(
                f"{label} MAP round trips, 2 clients, {text}, at {size:,}",
                "1/s",
                "higher",
                ("pmp", kind, mode, "round_trips_per_s"),
            )
    for size in options["sizes"]:
        if size == 0:
            continue
        key = str(size)
        for what, label in (("kernel_s", "all in the kernel"), ("answer_natpmp_s", "answering")):
            a, b = _get(pg, "start_with", key), _get(mu, "start_with", key)
            rows.append(
                Row(
                    f"Start with {size:,} persisted mappings: {label}",
                    "s",
                    "lower",
                    None if not a or a.get(what) is None else float(a[what]),
                    None if not b or b.get(what) is None else float(b[what]),
                    "" if not a or a.get(what) is not None else "not reached",
                    "" if not b or b.get(what) is not None else "not reached",
                )
            )
    for size in options["sizes"]:
        row(f"RSS at {size:,} mappings", "MB", "lower", ("rss_kib", str(size)), 1 / 1024)
    size = options["flow_size"]
    for what, label, unit, scale in (
        ("new_flows_per_s", "New flows/s through a mapped port", "1/s", 1.0),
        ("throughput_bps", "TCP throughput through a mapped port", "Gbit/s", 1e-9),
    ):
        for role, text in (("baseline", "no other mapping"), ("loaded", f"{size:,} mappings")):
            a = traffic_median(pg, role, what)
            b = traffic_median(mu, role, what)
            rows.append(
                Row(
                    f"{label}, {text}",
                    unit,
                    "higher",
                    None if a is None else a * scale,
                    None if b is None else b * scale,
                )
            )
        rows.append(
            Row(
                f"{label}: {size:,} mappings over none (median of paired runs)",
                "x",
                "higher",
                _get(pg, "traffic", "loaded", f"{what}_ratio"),
                _get(mu, "traffic", "loaded", f"{what}_ratio"),
            )
        )
        rows.append(
            Row(
                f"{label}: none over none, two labs (the measurement's noise)",
                "x",
                "higher",
                _get(pg, "traffic_aa", "loaded", f"{what}_ratio"),
                _get(mu, "traffic_aa", "loaded", f"{what}_ratio"),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    value: str
    met: bool | None  # None: not measured in this run


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def evaluate_targets(daemons: Json, options: Json) -> list[Target]:
    pg: Json = daemons.get("portgate", {})
    mu: Json = daemons.get("miniupnpd", {})
    sizes = [int(s) for s in options["sizes"]]
    mid = 5000 if 5000 in sizes else max(sizes)
    top = max(sizes)
    out: list[Target] = []
    for op in ("add", "get", "delete"):
        at0 = _get(pg, "upnp_twin", str(mid), op, "median_ms")
        atn = _get(pg, "upnp", str(mid), op, "median_ms")
        r = paired_ratio(pg, mid, op)
        out.append(
            Target(
                f"UPnP {op} at {mid:,} within 1.2x of its cost at 0 (medians; the cost at 0 "
                "from a twin daemon, calls interleaved)",
                "not measured" if r is None else f"{r:.2f}x ({atn:.2f} ms vs {at0:.2f} ms)",
                None if r is None else r <= 1.2,
            )
        )
    a, b = (
        _get(pg, "upnp", str(mid), "add", "median_ms"),
        _get(mu, "upnp", str(mid), "add", "median_ms"),
    )
    r = _ratio(b, a)
    out.append(
        Target(
            f"UPnP add at {mid:,} at least 20x faster than miniupnpd's",
            "not measured" if r is None else f"{r:.1f}x ({a:.2f} ms vs {b:.2f} ms)",
            None if r is None else r >= 20,
        )
    )
    listing = _get(pg, "list", str(mid))
    out.append(
        Target(
            f"GetListOfPortMappings returns all {mid:,} entries, well-formed, in <= 0.3 s",
            "not measured"
            if not listing
            else f"{listing['entries']}/{listing['expected']} entries, "
            f"well-formed: {listing['well_formed']}, {listing['seconds']:.3f} s",
            None if not listing else bool(listing["complete"] and listing["seconds"] <= 0.3),
        )
    )
    for kind, label in (("natpmp", "NAT-PMP"), ("pcp", "PCP")):
        for mode in ("refresh", "churn"):
            rate = _get(pg, "pmp", kind, mode, "round_trips_per_s")
            out.append(
                Target(
                    f"{label} {mode} >= 1,000 round trips/s at {options['pmp_size']:,} (2 clients)",
                    "not measured" if rate is None else f"{rate:.0f}/s",
                    None if rate is None else rate >= 1000,
                )
            )
    start = _get(pg, "start_with", str(top))
    if start:
        one = start.get("first_kernel_count_seen") == start["count"]
        answer = start.get("answer_natpmp_s")
        kernel = start.get("kernel_s")
        out.append(
            Target(
                f"Restart with {top:,}: all in the kernel at once (one transaction)",
                f"first count seen {start.get('first_kernel_count_seen')} of {start['count']}"
                f", complete after {kernel if kernel is None else round(kernel, 3)} s",
                bool(one and kernel is not None),
            )
        )
        out.append(
            Target(
                f"Restart with {top:,}: answering in under 2 s",
                f"{answer if answer is None else round(answer, 3)} s (NAT-PMP), "
                f"{start.get('answer_upnp_s') and round(start['answer_upnp_s'], 3)} s (UPnP)",
                answer is not None and answer < 2 and (start.get("answer_upnp_s") or 99) < 2,
            )
        )
    else:
        out.append(Target(f"Restart with {top:,}", "not measured", None))
    size = options["flow_size"]
    for key, label in (("new_flows_per_s", "New-flow rate"), ("throughput_bps", "Throughput")):
        r = _get(pg, "traffic", "loaded", f"{key}_ratio")
        noise = _get(pg, "traffic_aa", "loaded", f"{key}_pair_ratios") or []
        spread = f"; two labs with none: {min(noise):.2f}-{max(noise):.2f}" if noise else ""
        out.append(
            Target(
                f"{label} with {size:,} mappings within 5% of that with none",
                "not measured"
                if r is None
                else f"{r:.3f} of the rate with none (median of paired runs{spread})",
                None if r is None else r >= 0.95,
            )
        )
    rss = _get(pg, "rss_kib", str(top))
    out.append(
        Target(
            f"RSS at {top:,} mappings <= 60 MB",
            "not measured" if rss is None else f"{rss / 1024:.1f} MB",
            None if rss is None else rss / 1024 <= 60,
        )
    )
    return out


# -- machine and versions ------------------------------------------------------------------


def _first_line(*cmd: str) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine_info() -> Json:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
        with open("/proc/meminfo") as meminfo:
            total_kib = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        total_kib = 0
    return {
        "hostname": socket.gethostname(),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def tool_versions() -> Json:
    return {
        "nft": _first_line("nft", "--version"),
        "iperf3": _first_line("iperf3", "--version"),
    }


# -- output --------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("1/s",):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(value: float | None, unit: str, note: str) -> str:
    text = _fmt(value, unit)
    return f"{text} ({note})" if note else text


def markdown(data: Json) -> str:
    lines = [
        f"# portgate vs miniupnpd: {data['started_utc']}",
        "",
        f"- Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, "
        f"{data['machine']['memory_gib']} GiB, {data['machine']['os']}, "
        f"kernel {data['machine']['kernel']}, Python {data['machine']['python']}",
        f"- Load average at start: {', '.join(f'{x:.2f}' for x in data['machine']['loadavg'])}"
        f"; at the end: {', '.join(f'{x:.2f}' for x in data['loadavg_end'])}",
        f"- Versions: {'; '.join(f'{k}: {v}' for k, v in data['versions'].items())}",
        f"- Run time: {data['duration_s'] / 60:.1f} min; options: "
        + ", ".join(f"{k}={v}" for k, v in data["options"].items()),
        "",
        "Advantage: how many times better portgate is on the row (below 1: miniupnpd is better).",
        "",
        "| metric | unit | portgate | miniupnpd | advantage |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for item in data["rows"]:
        adv = item["advantage"]
        lines.append(
            f"| {item['metric']} | {item['unit']} "
            f"| {_cell(item['portgate'], item['unit'], item['portgate_note'])} "
            f"| {_cell(item['miniupnpd'], item['unit'], item['miniupnpd_note'])} "
            f"| {'—' if adv is None else f'{adv:,.1f}x' if adv >= 10 else f'{adv:.2f}x'} |"
        )
    lines += ["", "## portgate's targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for target in data["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[target["met"]]
        lines.append(f"| {target['text']} | {target['value']} | {met} |")
    events = [(name, e) for name, d in data["daemons"].items() for e in d.get("events", [])]
    if events:
        lines += ["", "## Events", ""]
        for name, event in events:
            details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("phase", "what"))
            lines.append(
                f"- {name}, {event['phase']}: {event['what']}"
                + (f" ({details})" if details else "")
            )
    lines.append("")
    return "\n".join(lines)


def write(data: Json, directory: str, stem: str) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, f"{stem}.json")
    md_path = os.path.join(directory, f"{stem}.md")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    with open(md_path, "w") as f:
        f.write(markdown(data))
    return json_path, md_path
