"""Real clients against a real listening site on 127.0.0.1: Debian's ``upnpc`` (miniupnpc
2.2.4, whose minimal XML parser is the pickiest consumer of descriptions, responses, faults and
the CDATA-wrapped PortMappingList) and, when installed, async-upnp-client (strict SCPD and
argument checks, and a real GENA subscription answered by our NOTIFY sender)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

UPNPC = shutil.which("upnpc")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def igd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("igd")
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.protocols.upnp.serve_igd", str(state)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            server.kill()
            pytest.fail(f"the test IGD did not start: {server.communicate(timeout=10)}")
        yield url
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def upnpc(url: str, *args: str) -> str:
    if UPNPC is None:
        pytest.fail("upnpc (Debian package miniupnpc) is missing; scripts/setup.sh installs it")
    done = subprocess.run(
        [UPNPC, "-u", url, *args], capture_output=True, text=True, timeout=15, check=False
    )
    return done.stdout + done.stderr


def test_upnpc_finds_the_igd_and_reads_the_connection(igd: str) -> None:
    out = upnpc(igd, "-s")
    assert "Found valid IGD : http://127.0.0.1:" in out
    assert "Connection Type : IP_Routed" in out
    assert "Status : Connected" in out
    assert "ExternalIPAddress = 203.0.113.1" in out


def test_upnpc_lists_generic_entries_until_713(igd: str) -> None:
    out = upnpc(igd, "-l")
    assert "TCP  2222->192.168.1.10:22    'ssh &lt;admin&gt; &amp; co' '' 0" in out
    assert "UDP  4500->192.168.1.10:4500" in out
    assert "returned 713 (SpecifiedArrayIndexInvalid)" in out


def test_upnpc_parses_the_port_mapping_list(igd: str) -> None:
    out = upnpc(igd, "-L")
    assert " 0 TCP  2222->192.168.1.10:22    'ssh &lt;admin&gt; &amp; co' '' 0" in out
    assert " 1 UDP  4500->192.168.1.10:4500" in out


def test_upnpc_reads_faults(igd: str) -> None:
    out = upnpc(igd, "-a", "192.168.1.10", "8080", "8080", "TCP", "600")
    assert "failed with code 606 (Action not authorized)" in out
    out = upnpc(igd, "-K", "3")
    assert "failed with code 704 (NoSuchEntry)" in out


def test_every_lan_address_is_served_on_one_port(igd: str) -> None:
    other = igd.replace("127.0.0.1", "127.0.0.2")
    with urllib.request.urlopen(other, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == 'text/xml; charset="utf-8"'
        assert b"<presentationURL>http://127.0.0.2/</presentationURL>" in response.read()
    request = urllib.request.Request(other, headers={"Host": "127.0.0.1"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403


def test_upnpc_reads_the_firewall_and_presentation_url(igd: str) -> None:
    assert "Inbound Pinhole Allowed: Yes" in upnpc(igd, "-S")
    assert "http://127.0.0.1/" in upnpc(igd, "-P")


async def async_upnp_client_session(url: str) -> dict[str, Any]:
    from async_upnp_client.aiohttp import AiohttpNotifyServer, AiohttpRequester
    from async_upnp_client.client_factory import UpnpFactory
    from async_upnp_client.exceptions import UpnpActionResponseError
    from async_upnp_client.profiles.igd import IgdDevice

    requester = AiohttpRequester()
    device = await UpnpFactory(requester, non_strict=False).async_create_device(url)
    server = AiohttpNotifyServer(requester, source=("127.0.0.1", 0))
    await server.async_start_server()
    events: dict[str, dict[str, object]] = {}
    igd = IgdDevice(device, server.event_handler)
    igd.on_event = lambda service, variables: events.setdefault(
        service.service_type, {v.name: v.value for v in variables}
    )
    seen: dict[str, Any] = {
        "services": sorted(s.service_type for s in device.all_services),
        "external": await igd.async_get_external_ip_address(),
        "status": await igd.async_get_status_info(),
        "entry": await igd.async_get_generic_port_mapping_entry(0),
        "firewall": await igd.async_get_firewall_status(),
        "link": await igd.async_get_common_link_properties(),
    }
    wanip = device.find_service("urn:schemas-upnp-org:service:WANIPConnection:2")
    listing = await wanip.action("GetListOfPortMappings").async_call(
        NewStartPort=1, NewEndPort=65535, NewProtocol="TCP", NewManage=True, NewNumberOfPorts=10
    )
    seen["listing"] = listing["NewPortListing"]
    try:
        await igd.async_add_port_mapping(
            IPv4Address("0.0.0.0"),
            8080,
            "TCP",
            8080,
            IPv4Address("192.168.1.10"),
            True,
            "x",
            timedelta(seconds=60),
        )
    except UpnpActionResponseError as error:
        seen["add_error"] = error.error_code
    await igd.async_subscribe_services(auto_resubscribe=False)
    for _ in range(50):
        if len(events) == 4:
            break
        await asyncio.sleep(0.1)
    seen["events"] = events
    await igd.async_unsubscribe_services()
    await server.async_stop_server()
    return seen


def test_async_upnp_client_reads_everything_and_hears_events(igd: str) -> None:
    seen = asyncio.run(async_upnp_client_session(igd))
    assert seen["services"] == [
        "urn:schemas-upnp-org:service:Layer3Forwarding:1",
        "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
        "urn:schemas-upnp-org:service:WANIPConnection:2",
        "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
    ]
    assert seen["external"] == "203.0.113.1"
    assert seen["status"].connection_status == "Connected"
    assert seen["entry"].description == "ssh <admin> & co"
    assert seen["entry"].external_port == 2222
    assert seen["firewall"].inbound_pinhole_allowed is True
    assert seen["link"].physical_link_status == "Up"
    assert "<p:NewDescription>ssh &lt;admin&gt; &amp; co</p:NewDescription>" in seen["listing"]
    assert seen["add_error"] == 606
    wanip = seen["events"]["urn:schemas-upnp-org:service:WANIPConnection:2"]
    assert wanip["ExternalIPAddress"] == "203.0.113.1"
    assert wanip["PortMappingNumberOfEntries"] == 2
    assert seen["events"]["urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1"] == {
        "PhysicalLinkStatus": "Up"
    }
