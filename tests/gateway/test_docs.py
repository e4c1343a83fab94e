"""The documentation agrees with the code: every config key documented with its real default,
every metric and audit field listed, every CLI option of the import described, every link
resolving."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml

from gateway.audit import change_fields
from gateway.cli import build_parser
from gateway.config import Config, LanConfig, Rule, StunConfig, WanConfig, _plain, dump_config
from gateway.errors import Reason
from gateway.metrics import GatewayMetrics
from gateway.model import Change, ChangeKind, Endpoint, Kind, Mapping, MappingKey, Origin, Owner
from gateway.model import Proto as ModelProto

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"
MIGRATING = DOCS / "migrating.md"
DEFAULTS = Config(wan=WanConfig(interface="eth0"), lan=(LanConfig(interface="br-lan"),))
#: Default-column words that are not YAML values.
NOT_A_VALUE = {"required", "see below"}


def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        others = [member for member in t.types if not isinstance(member, mi.NoneType)]
        if len(others) == 1:
            return _unwrap(others[0])
    return t


def key_paths(t: mi.Type | None = None, prefix: str = "") -> Iterator[str]:
    """Every key of the schema: ``wan.interface``, ``lan``, ``lan[].interface``, ..."""
    t = _unwrap(mi.type_info(Config) if t is None else t)
    if isinstance(t, mi.StructType):
        for field in t.fields:
            yield from key_paths(field.type, f"{prefix}.{field.encode_name}".lstrip("."))
        return
    yield prefix
    if isinstance(t, mi.VarTupleType) and isinstance(_unwrap(t.item_type), mi.StructType):
        yield from key_paths(t.item_type, prefix + "[]")


def documented(path: Path = REFERENCE) -> dict[str, str]:
    """Key -> its default cell, from the tables' rows ``| `key` | default | meaning |``."""
    rows: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\| `([a-z0-9_.\[\]]+)` \| ([^|]*) \|", line)
        if match:
            assert match[1] not in rows, f"{match[1]} is documented twice"
            rows[match[1]] = match[2].strip()
    return rows


#: For keys inside list items: an item with every default, to read them from.
ITEM_DEFAULTS: dict[str, Any] = {
    "lan[]": _plain(LanConfig(interface="x")),
    "policy.rules[]": _plain(Rule(action="allow")),
}


#: For keys inside a section that is null by default: a section with every default.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "wan.stun": _plain(StunConfig(server="stun.example.net")),
}


def real_default(path: str) -> Any:
    section, _, key = path.rpartition(".")
    if section in OPTIONAL_DEFAULTS:
        return OPTIONAL_DEFAULTS[section][key]
    if "[]." in path:
        item, _, key = path.rpartition(".")
        return ITEM_DEFAULTS[item][key]
    data: Any = yaml.safe_load(dump_config(DEFAULTS))
    for part in path.split("."):
        data = data[part]
    return data


def test_every_config_key_is_documented() -> None:
    keys = list(key_paths())
    assert "metrics.listen" in keys and "policy.rules[].proto" in keys
    rows = documented()
    missing = [key for key in keys if key not in rows]
    assert not missing, f"undocumented config keys in docs/configuration.md: {missing}"


def test_no_documented_key_is_made_up() -> None:
    unknown = sorted(set(documented()) - set(key_paths()))
    assert not unknown, f"docs/configuration.md documents keys the schema lacks: {unknown}"


def test_documented_defaults_are_the_real_ones() -> None:
    required = {field.encode_name for field in msgspec.structs.fields(Config) if field.required}
    for key, cell in documented().items():
        if cell in NOT_A_VALUE:
            top = key.split(".")[0].split("[")[0]
            assert (
                cell == "see below"
                or top in required
                or key.endswith(("[].interface", "[].action"))
            ), f"{key} is not required"
            continue
        match = re.fullmatch(r"`([^`]*)`", cell)
        assert match, f"{key}: the default cell should be one `value`, not {cell!r}"
        assert yaml.safe_load(match[1]) == real_default(key), key


def test_the_commented_example_points_to_the_reference() -> None:
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()


# -- operations -------------------------------------------------------------------------------


def table_names(path: Path, first_cell: str) -> set[str]:
    pattern = re.compile(rf"^\| `({first_cell})` \|", re.M)
    return set(pattern.findall(path.read_text()))


def test_every_metric_with_a_service_is_documented(tmp_path: Path) -> None:
    from tests.gateway.test_service import Rig

    rig = Rig(tmp_path / "leases.sqlite3")
    rig.service.start()
    metrics = GatewayMetrics()
    metrics.attach(rig.service, subscriptions=lambda: 0)
    families = {
        metric.name + ("_total" if metric.type == "counter" else "")
        for metric in metrics.registry.collect()
    }
    metrics.detach()
    assert families == table_names(OPERATIONS, r"portgate_[a-z0-9_]+")


def test_every_refusal_reason_is_listed() -> None:
    text = OPERATIONS.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `portgate_refusals"))
    listed = set(re.findall(r"`([a-z_]+)`", row.split("|")[4]))
    assert listed == {reason.value for reason in Reason}


def test_the_json_audit_fields_are_the_documented_ones() -> None:
    before = Mapping(
        uid=65536,
        kind=Kind.PORT_MAP,
        key=MappingKey(ModelProto.TCP, Endpoint(ip("203.0.113.1"), 8080)),
        internal=Endpoint(ip("192.168.1.10"), 80),
        owner=Owner(Origin.UPNP, ip("192.168.1.10")),
    )
    after = Mapping(
        uid=65536,
        kind=Kind.PORT_MAP,
        key=MappingKey(ModelProto.TCP, Endpoint(ip("198.51.100.7"), 8080)),
        internal=before.internal,
        owner=before.owner,
    )
    fields = set(change_fields(Change(ChangeKind.UPDATED, before, after)))
    assert fields == {
        "event",
        "kind",
        "proto",
        "external",
        "internal",
        "lifetime",
        "origin",
        "client",
        "description",
        "uid",
        "remote",
        "previous",
    }
    assert fields <= table_names(OPERATIONS, r"[a-z]+")


def ip(text: str) -> Any:
    from ipaddress import ip_address

    return ip_address(text)


# -- migrating --------------------------------------------------------------------------------


def test_every_import_option_is_described() -> None:
    parser = build_parser()
    sub = next(
        action
        for action in parser._actions  # argparse keeps its subparsers there
        if action.__class__.__name__ == "_SubParsersAction"
    )
    command = sub.choices["import-miniupnpd"]  # type: ignore[attr-defined]
    options = {
        option
        for action in command._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    text = MIGRATING.read_text()
    assert all(f"`{option}" in text for option in options)
    assert set(re.findall(r"^\| `(--[a-z-]+)", text, re.M)) <= options


# -- links ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {
        slug(line.lstrip("#"))
        for line in path.read_text().splitlines()
        if line.startswith("#") and not line.startswith("#!")
    }


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        assert resolved.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading for {target}"


def test_the_readme_has_the_two_commands_and_real_clients() -> None:
    text = (ROOT / "README.md").read_text()
    for needed in (
        "make run",
        "make test",
        "ip netns exec pgdemo-lan upnpc -i -l",
        "ip netns exec pgdemo-lan natpmpc -g 192.168.77.1",
        "portgate import-miniupnpd",
        "Compared with miniupnpd",
    ):
        assert needed in text, needed
