"""End to end: the daemon in the lab's gateway, found by SSDP multicast and driven over SOAP by
real UPnP clients on the LAN host: Debian's upnpc (miniupnpc), libtorrent's UPnP and
async-upnp-client; with real traffic from the WAN host and nothing answered on the WAN."""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import time

import pytest

from tests.netlab import (
    GW_LAN,
    LAN2_HOST,
    LAN_HOST,
    WAN_GW,
    GatewayDaemon,
    Lab,
    Libtorrent,
    inside,
)

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def upnpc(lab: Lab, namespace: str, *args: str) -> str:
    # -i: the lab's external address is a documentation address, which upnpc would refuse
    done = lab.run(namespace, "timeout", "30", "upnpc", "-i", *args, check=False)
    return done.stdout + done.stderr


def http_port(daemon: GatewayDaemon) -> int:
    found = re.search(r"UPnP IGD:\d on port (\d+)", daemon.log_text())
    assert found, daemon.log_text()
    return int(found.group(1))


def test_upnpc_discovers_the_gateway_by_ssdp_and_reads_it(lab: Lab, daemon: GatewayDaemon) -> None:
    out = upnpc(lab, lab.lan, "-s")
    assert f"http://{GW_LAN}:" in out
    assert "ExternalIPAddress = 203.0.113.1" in out
    assert "Connected" in out


def test_upnpc_maps_ports_that_carry_traffic_until_deleted(lab: Lab, daemon: GatewayDaemon) -> None:
    out = upnpc(lab, lab.lan, "-e", "e2e tcp", "-a", LAN_HOST, "8000", "8080", "TCP", "3600")
    assert "is redirected to internal 192.168.77.10:8000" in out, out
    out = upnpc(lab, lab.lan, "-a", LAN_HOST, "8001", "8081", "UDP", "3600")
    assert "is redirected" in out, out
    listing = upnpc(lab, lab.lan, "-l")
    assert "8080->192.168.77.10:8000" in listing and "'e2e tcp'" in listing
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 8000)
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 8081), 8001)
    rows = daemon.listing()
    assert {(r["origin"], r["client"]) for r in rows} == {("upnp", LAN_HOST)}
    assert "UPNP_DeletePortMapping() returned : 0" in upnpc(lab, lab.lan, "-d", "8080", "TCP")
    assert not lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8080), 8000)
    assert [r["external"] for r in daemon.listing()] == [f"{WAN_GW}:8081"]


def test_upnpc_cannot_map_for_another_host_or_take_its_port(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    out = upnpc(lab, lab.lan2, "-a", LAN_HOST, "8000", "8090", "TCP", "600")
    assert "is redirected" not in out
    assert "606" in out or "718" in out, out
    assert "is redirected" in upnpc(lab, lab.lan, "-a", LAN_HOST, "8000", "8091", "TCP", "600")
    taken = upnpc(lab, lab.lan2, "-a", LAN2_HOST, "8000", "8091", "TCP", "600")
    assert "718" in taken, taken
    refused = upnpc(lab, lab.lan2, "-d", "8091", "TCP")
    assert "returned : 0" not in refused
    assert [r["external"] for r in daemon.listing()] == [f"{WAN_GW}:8091"]


def test_nothing_answers_ssdp_or_http_from_the_wan(lab: Lab, daemon: GatewayDaemon) -> None:
    port = http_port(daemon)
    search = (
        b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
        b"MX: 1\r\nST: ssdp:all\r\n\r\n"
    )
    with inside(lab.wan):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2.5)
        try:
            for target in (WAN_GW, GW_LAN):
                sock.sendto(search, (target, 1900))
            with pytest.raises(TimeoutError):
                sock.recvfrom(4096)
        finally:
            sock.close()
        for target in (WAN_GW, GW_LAN):
            with pytest.raises(OSError):
                conn = socket.create_connection((target, port), timeout=2)
                try:
                    conn.sendall(b"GET /rootDesc.xml HTTP/1.1\r\nHost: x\r\n\r\n")
                    conn.settimeout(2)
                    if not conn.recv(100):
                        raise ConnectionResetError("closed without an answer")
                finally:
                    conn.close()


def test_libtorrent_maps_its_listen_port_by_upnp(lab: Lab, daemon: GatewayDaemon) -> None:
    torrent = Libtorrent(lab, lab.lan, 6882, upnp=True, natpmp=False)
    mapped = torrent.mapped()
    try:
        assert mapped, "".join(torrent.lines)
        rows = daemon.listing()
        assert any(r["origin"] == "upnp" and r["internal"] == f"{LAN_HOST}:6882" for r in rows), (
            rows
        )
        with inside(lab.wan):
            socket.create_connection((WAN_GW, mapped), timeout=3).close()
    finally:
        torrent.stop()


def test_async_upnp_client_finds_the_gateway_and_maps_a_port(
    lab: Lab, daemon: GatewayDaemon
) -> None:
    script = textwrap.dedent(
        """
        import asyncio, datetime, ipaddress
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory
        from async_upnp_client.profiles.igd import IgdDevice
        from async_upnp_client.search import async_search

        async def main():
            found = []
            async def on_response(headers):
                found.append(headers["location"])
            await async_search(on_response, timeout=3,
                               search_target="urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                               source=("192.168.77.10", 0))
            assert found, "no SSDP answer"
            factory = UpnpFactory(AiohttpRequester())
            device = await factory.async_create_device(found[0])
            igd = IgdDevice(device, None)
            print("EXTERNAL", await igd.async_get_external_ip_address())
            await igd.async_add_port_mapping(
                remote_host=ipaddress.IPv4Address("0.0.0.0"), external_port=8500,
                protocol="TCP", internal_port=8500,
                internal_client=ipaddress.IPv4Address("192.168.77.10"), enabled=True,
                description="async-upnp-client", lease_duration=datetime.timedelta(seconds=600))
            print("COUNT", await igd.async_get_port_mapping_number_of_entries())
        asyncio.run(main())
        """
    )
    out = lab.python(lab.lan, script, timeout=60)
    assert "EXTERNAL 203.0.113.1" in out
    [row] = daemon.listing()
    assert row["external"] == f"{WAN_GW}:8500" and row["description"] == "async-upnp-client"
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8500), 8500)


def test_upnpc_add_any_and_delete_range(lab: Lab, daemon: GatewayDaemon) -> None:
    assert "is redirected" in upnpc(lab, lab.lan, "-a", LAN_HOST, "8100", "8100", "TCP", "600")
    # AddAnyPortMapping for a port the host already holds for another internal port
    out = upnpc(lab, lab.lan, "-n", LAN_HOST, "8101", "8100", "TCP", "600")
    found = re.search(r"external 203\.0\.113\.1:(\d+) TCP is redirected", out)
    assert found, out
    other = int(found.group(1))
    assert other != 8100
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, other), 8101)
    assert len(daemon.listing()) == 2
    upnpc(lab, lab.lan, "-N", "8000", "9000", "TCP")
    assert daemon.listing() == []


def test_the_miniupnpc_python_module_maps_a_port(lab: Lab, daemon: GatewayDaemon) -> None:
    out = lab.python(
        lab.lan,
        """
        import miniupnpc
        u = miniupnpc.UPnP()
        u.discoverdelay = 2000
        assert u.discover() >= 1
        u.selectigd()
        print("EXTERNAL", u.externalipaddress())
        print("ADDED", u.addportmapping(8200, "UDP", "192.168.77.10", 8200, "miniupnpc module", ""))
        print("ENTRY", u.getspecificportmapping(8200, "UDP"))
        """,
        timeout=60,
    )
    assert "EXTERNAL 203.0.113.1" in out and "ADDED True" in out, out
    assert "('192.168.77.10', 8200, 'miniupnpc module'" in out, out
    assert lab.reaches(lab.wan, lab.lan, "udp", (WAN_GW, 8200), 8200)


def test_a_windows_client_gets_the_igd1_view_and_can_map(lab: Lab, daemon: GatewayDaemon) -> None:
    port = http_port(daemon)
    windows = "Microsoft-Windows/10.0 UPnP/1.0"
    out = lab.python(
        lab.lan,
        f"""
        import http.client
        c = http.client.HTTPConnection("{GW_LAN}", {port}, timeout=5)
        c.request("GET", "/rootDesc.xml", headers={{"User-Agent": "{windows}"}})
        r = c.getresponse(); body = r.read().decode()
        print("STATUS", r.status)
        print("IGD1", "InternetGatewayDevice:1" in body, "IGD2", "InternetGatewayDevice:2" in body)
        print("V6FC", "WANIPv6FirewallControl" in body)
        import re
        control = re.search(r"WANIPConnection:1</serviceType>.*?<controlURL>([^<]+)<", body, re.S)
        envelope = (
            '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
            ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            '<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">'
            '<NewRemoteHost></NewRemoteHost><NewExternalPort>8300</NewExternalPort>'
            '<NewProtocol>TCP</NewProtocol><NewInternalPort>8300</NewInternalPort>'
            '<NewInternalClient>192.168.77.10</NewInternalClient><NewEnabled>1</NewEnabled>'
            '<NewPortMappingDescription>xbox</NewPortMappingDescription>'
            '<NewLeaseDuration>0</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>'
        )
        c = http.client.HTTPConnection("{GW_LAN}", {port}, timeout=5)
        c.request("POST", control.group(1), body=envelope, headers={{
            "User-Agent": "{windows}", "Content-Type": 'text/xml; charset="utf-8"',
            "SOAPACTION": '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'}})
        print("SOAP", c.getresponse().status)
        """,
    )
    assert "STATUS 200" in out
    assert "IGD1 True IGD2 False" in out and "V6FC False" in out, out
    assert "SOAP 200" in out, out
    [row] = daemon.listing()
    assert row["external"] == f"{WAN_GW}:8300"
    assert row["lifetime_remaining"] is None  # IGD:1 lease 0 is permanent
    assert lab.reaches(lab.wan, lab.lan, "tcp", (WAN_GW, 8300), 8300)


def test_a_reload_applies_new_upnp_and_natpmp_settings(lab: Lab, daemon: GatewayDaemon) -> None:
    """SIGHUP with a renamed device and NAT-PMP switched off: clients see both at once."""
    assert (
        "Public IP address : 203.0.113.1"
        in lab.run(lab.lan, "natpmpc", "-g", GW_LAN, check=False).stdout
    )
    daemon.config.write_text(
        daemon.config.read_text()
        + 'upnp: {friendly_name: "renamed router"}\nnatpmp: {enabled: false}\n'
    )
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        log = daemon.log_text()
        if "listening again" in log and log.split("listening again")[1].count("UPnP IGD:") > 0:
            break
        time.sleep(0.1)
    log = daemon.log_text()
    assert "reload: upnp, natpmp changed" in log, log[-2000:]
    port = int(re.findall(r"UPnP IGD:\d on port (\d+)", log)[-1])
    out = lab.python(
        lab.lan,
        f"""
        import http.client
        c = http.client.HTTPConnection("{GW_LAN}", {port}, timeout=5)
        c.request("GET", "/rootDesc.xml")
        print(c.getresponse().read().decode())
        """,
    )
    assert "<friendlyName>renamed router</friendlyName>" in out
    # natpmpc would retry for a minute: 5 s without an answer is enough
    late = lab.run(lab.lan, "timeout", "5", "natpmpc", "-g", GW_LAN, check=False).stdout
    assert "Public IP address" not in late
    # mapping still works through UPnP, found again by SSDP
    out = upnpc(lab, lab.lan, "-e", "after reload", "-a", LAN_HOST, "8400", "8400", "TCP")
    assert "is redirected to internal" in out, out
