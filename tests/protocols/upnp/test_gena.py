"""GENA (protocols.md §4, §8.3): callback rules, subscription bookkeeping, event sequence
numbers and delivery, over the real gateway core; the TCP sender on a memory reactor."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
from lxml import etree
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from protocols.upnp.description import Service
from protocols.upnp.gena import (
    EVENT_NS,
    CallbackUrl,
    EventService,
    GenaError,
    NotifyMessage,
    Subscriptions,
    TcpNotifySender,
    encode_propertyset,
    next_seq,
    parse_callbacks,
    parse_statevar,
    parse_timeout,
)
from tests.protocols.upnp.igd_rig import CLIENT, CLIENT6, COMMON, IP, OTHER, Rig, add_args

SOURCE = ip_address(CLIENT)


def refused(header: str | None, source: str = CLIENT) -> int:
    with pytest.raises(GenaError) as caught:
        parse_callbacks(header, ip_address(source))
    return caught.value.status


# -- CALLBACK, TIMEOUT, STATEVAR, SEQ (pure) -------------------------------------------------------


def test_a_callback_to_the_subscriber_itself_is_accepted() -> None:
    [url] = parse_callbacks(f"<http://{CLIENT}:6000/upnp/event?x=1>", SOURCE)
    assert url == CallbackUrl(SOURCE, 6000, "/upnp/event?x=1")
    assert str(url) == f"http://{CLIENT}:6000/upnp/event?x=1"
    [bare] = parse_callbacks(f"<http://{CLIENT}>", SOURCE)
    assert (bare.port, bare.path) == (80, "/")
    [v6] = parse_callbacks(f"<http://[{CLIENT6}]:6000/e>", ip_address(CLIENT6))
    assert v6.host_header == f"[{CLIENT6}]:6000"
    two = parse_callbacks(f"<http://{CLIENT}:1/a> <http://{CLIENT}:2/b>", SOURCE)
    assert [u.port for u in two] == [1, 2]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"http://{CLIENT}:6000/",  # no angle brackets
        f"<https://{CLIENT}:6000/>",
        f"<ftp://{CLIENT}/>",
        "<http://192.168.1.99:6000/>",  # CallStranger: someone else
        "<http://198.51.100.1/>",
        "<http://localhost:6000/>",
        "<http://router.lan:6000/>",
        f"<http://user:pw@{CLIENT}:6000/>",
        f"<http://{CLIENT}:0/>",
        f"<http://{CLIENT}:99999/>",
        f"<http://{CLIENT}/a b>",
        f"<http://{CLIENT}/a\r\nX-Injected: 1>",
        f"<http://{CLIENT}/\u00e9>",
        f"junk <http://{CLIENT}/>",
        f"<http://{CLIENT}/{'x' * 1100}>",
        "".join(f"<http://{CLIENT}:{p}/>" for p in range(1, 6)),
        f"<http://{CLIENT}/> <http://192.168.1.99/>",
    ],
)
def test_callbacks_that_break_the_rules_are_412(header: str | None) -> None:
    assert refused(header) == 412


def test_an_ipv4_mapped_source_does_not_open_other_hosts() -> None:
    assert refused("<http://[::ffff:192.168.1.99]/>") == 412


def test_timeouts_are_clamped_and_infinite_is_the_default() -> None:
    assert parse_timeout(None) == 1800
    assert parse_timeout("Second-300") == 1800
    assert parse_timeout("second-4000") == 4000
    assert parse_timeout("Second-100000") == 86400
    assert parse_timeout("infinite") == 1800
    assert parse_timeout("Second-infinite") == 1800
    assert parse_timeout("Second--5") == 1800


def test_statevar_picks_a_subset_of_the_evented_variables() -> None:
    evented = ("ExternalIPAddress", "PortMappingNumberOfEntries", "SystemUpdateID")
    assert parse_statevar(None, evented) is None
    assert parse_statevar("*", evented) == evented
    assert parse_statevar("SystemUpdateID, ExternalIPAddress", evented) == (
        "ExternalIPAddress",
        "SystemUpdateID",
    )
    for bad in ("Uptime", "", "ExternalIPAddress,Nope"):
        with pytest.raises(GenaError):
            parse_statevar(bad, evented)


def test_seq_wraps_to_one_never_zero() -> None:
    assert next_seq(0) == 1
    assert next_seq(41) == 42
    assert next_seq(4294967295) == 1


def test_the_propertyset_escapes_values() -> None:
    body = encode_propertyset([("ExternalIPAddress", "<&>"), ("X", "")])
    assert body.startswith(b'<?xml version="1.0"?>')
    root = etree.fromstring(body)
    assert root.tag == f"{{{EVENT_NS}}}propertyset"
    assert [(p[0].tag, p[0].text) for p in root] == [("ExternalIPAddress", "<&>"), ("X", None)]


def test_notify_requests_carry_the_headers_of_section_4_3() -> None:
    url = CallbackUrl(SOURCE, 6000, "/evt")
    message = NotifyMessage((url,), "192.168.1.1", "uuid:abc", 7, b"<x/>")
    assert message.encode(url) == (
        b"NOTIFY /evt HTTP/1.1\r\nHOST: 192.168.1.10:6000\r\n"
        b'CONTENT-TYPE: text/xml; charset="utf-8"\r\nCONTENT-LENGTH: 4\r\n'
        b"NT: upnp:event\r\nNTS: upnp:propchange\r\nSID: uuid:abc\r\nSEQ: 7\r\n"
        b"CONNECTION: close\r\n\r\n<x/>"
    )


# -- bookkeeping (pure) ----------------------------------------------------------------------------

EVENTED = ("ExternalIPAddress",)


def subscribe(subs: Subscriptions, source: str = CLIENT, now: float = 0.0, **headers: str | None):  # type: ignore[no-untyped-def]
    values: dict[str, str | None] = {
        "callback": f"<http://{source}:6000/>",
        "nt": "upnp:event",
        "timeout": None,
        "statevar": None,
    }
    values.update(headers)
    return subs.subscribe(
        IP, EVENTED, source=ip_address(source), local_host="192.168.1.1", view=2, now=now, **values
    )


def test_subscriptions_renew_expire_and_end() -> None:
    subs = Subscriptions()
    sub = subscribe(subs, timeout="Second-3600")
    short = subscribe(subs)
    assert sub.sid.startswith("uuid:") and sub.sid != short.sid
    assert (sub.expires, short.expires) == (3600, 1800)
    assert subs.expire(1799) == []
    assert subs.expire(1800) == [short] and not short.active
    renewed = subs.renew(IP, sub.sid, source=SOURCE, timeout=None, now=3000)
    assert renewed is sub and sub.expires == 4800
    for source, service in ((ip_address(OTHER), IP), (SOURCE, COMMON)):
        with pytest.raises(GenaError) as caught:
            subs.renew(service, sub.sid, source=source, timeout=None, now=3000)
        assert caught.value.status == 412
    with pytest.raises(GenaError):
        subs.renew(IP, sub.sid, source=SOURCE, timeout=None, now=4800)  # just expired
    assert len(subs) == 0


def test_unsubscribe_rules() -> None:
    subs = Subscriptions()
    sub = subscribe(subs)
    for sid in (None, "uuid:nope"):
        with pytest.raises(GenaError) as caught:
            subs.unsubscribe(IP, sid, source=SOURCE, now=1)
        assert caught.value.status == 412
    subs.unsubscribe(IP, sub.sid, source=SOURCE, now=1)
    assert not sub.active and len(subs) == 0


@pytest.mark.parametrize("nt", [None, "upnp:propchange", ""])
def test_nt_must_be_upnp_event(nt: str | None) -> None:
    with pytest.raises(GenaError) as caught:
        subscribe(Subscriptions(), nt=nt)
    assert caught.value.status == 412


def test_subscriptions_are_bounded_per_source_and_in_total() -> None:
    subs = Subscriptions(per_source=2, total=3)
    subscribe(subs)
    subscribe(subs)
    with pytest.raises(GenaError) as per_source:
        subscribe(subs)
    assert per_source.value.status == 503
    subscribe(subs, source=OTHER)
    with pytest.raises(GenaError) as total:
        subscribe(subs, source="192.168.1.30")
    assert total.value.status == 503
    assert subscribe(subs, source="192.168.1.30", now=1e9)  # expired ones make room


# -- delivery over the real core -------------------------------------------------------------------


class Sender:
    """Records each NOTIFY and answers when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[NotifyMessage, Deferred[int]]] = []

    def __call__(self, message: NotifyMessage) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.sent.append((message, d))
        return d

    def answer(self, status: int = 200) -> NotifyMessage:
        message, d = next((m, d) for m, d in self.sent if not d.called)
        d.callback(status)
        return message

    def values(self, index: int = -1) -> dict[str, str]:
        root = etree.fromstring(self.sent[index][0].body)
        return {p[0].tag: p[0].text or "" for p in root}

    def seqs(self) -> list[int]:
        return [m.seq for m, _ in self.sent]


class Events:
    def __init__(self, path: Path) -> None:
        self.rig = Rig(path)
        self.sender = Sender()
        self.service = EventService(
            self.rig.reactor, self.rig.state, self.rig.settings, self.rig.service.now, self.sender
        )

    def subscribe(self, service: Service = IP, **headers: str | None) -> str:
        values: dict[str, str | None] = {
            "callback": f"<http://{CLIENT}:6000/evt>",
            "nt": "upnp:event",
            "timeout": "Second-1800",
            "user-agent": "MiniUPnPc",
        }
        values.update(headers)
        answer = self.service.subscribe(service, values, source=SOURCE, local_host="192.168.1.1")
        assert answer.status == 200, answer
        sid = dict(answer.headers)["SID"]
        self.rig.reactor.advance(0)
        return sid


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events(tmp_path)


def test_the_initial_event_has_seq_0_and_every_evented_variable(events: Events) -> None:
    sid = events.subscribe()
    [(message, _)] = events.sender.sent
    assert (message.sid, message.seq, message.local_host) == (sid, 0, "192.168.1.1")
    assert message.callbacks == (CallbackUrl(SOURCE, 6000, "/evt"),)
    assert events.sender.values() == {
        "PossibleConnectionTypes": "IP_Routed",
        "ConnectionStatus": "Connected",
        "ExternalIPAddress": "203.0.113.1",
        "PortMappingNumberOfEntries": "0",
        "SystemUpdateID": str(events.rig.state.system_update_id),
    }


def test_a_change_before_the_initial_event_goes_out_with_it(events: Events) -> None:
    answer = events.service.subscribe(
        IP,
        {"callback": f"<http://{CLIENT}:6000/evt>", "nt": "upnp:event"},
        source=SOURCE,
        local_host="192.168.1.1",
    )
    assert answer.status == 200
    events.rig.service.set_external_address(IPv4Address("198.51.100.1"))
    assert events.sender.sent == []  # nothing before the initial event
    events.rig.reactor.advance(0)
    assert events.sender.seqs() == [0]
    assert events.sender.values()["ExternalIPAddress"] == "198.51.100.1"
    assert len(events.sender.values()) == 5


def test_an_igd1_client_hears_no_system_update_id(events: Events) -> None:
    events.subscribe(**{"user-agent": "Microsoft-Windows/10.0 UPnP/1.0"})
    assert "SystemUpdateID" not in events.sender.values()


def test_table_changes_are_events_with_rising_seq(events: Events) -> None:
    events.subscribe()
    events.sender.answer()
    events.rig.ok("AddPortMapping", add_args(external=8080))
    assert events.sender.seqs() == [0, 1]
    assert events.sender.values() == {
        "PortMappingNumberOfEntries": "1",
        "SystemUpdateID": str(events.rig.state.system_update_id),
    }
    events.sender.answer()
    events.rig.service.set_external_address(IPv4Address("198.51.100.1"))
    events.rig.reactor.advance(0)
    assert events.sender.seqs()[-1] == 2
    assert events.sender.values()["ExternalIPAddress"] == "198.51.100.1"


def test_changes_during_a_delivery_are_coalesced_into_the_next(events: Events) -> None:
    events.subscribe()  # the initial event stays in flight
    events.rig.ok("AddPortMapping", add_args(external=8080))
    events.rig.ok("AddPortMapping", add_args(external=8081))
    assert events.sender.seqs() == [0]
    events.sender.answer()
    assert events.sender.seqs() == [0, 1]
    assert events.sender.values()["PortMappingNumberOfEntries"] == "2"
    events.sender.answer()
    assert events.sender.seqs() == [0, 1]


def test_seq_wraps_past_the_largest_ui4(events: Events) -> None:
    sid = events.subscribe()
    events.sender.answer()
    subscription = events.service.subscriptions.get(sid)
    assert subscription is not None
    subscription.seq = 4294967295
    events.rig.ok("AddPortMapping", add_args(external=8080))
    events.sender.answer()
    events.rig.ok("AddPortMapping", add_args(external=8081))
    assert events.sender.seqs()[-2:] == [4294967295, 1]


def test_statevar_limits_what_a_subscriber_hears(events: Events) -> None:
    answer = events.service.subscribe(
        IP,
        {
            "callback": f"<http://{CLIENT}:6000/evt>",
            "nt": "upnp:event",
            "statevar": "ExternalIPAddress",
        },
        source=SOURCE,
        local_host="192.168.1.1",
    )
    assert dict(answer.headers)["ACCEPTED-STATEVAR"] == "ExternalIPAddress"
    events.rig.reactor.advance(0)
    assert events.sender.values() == {"ExternalIPAddress": "203.0.113.1"}
    events.sender.answer()
    events.rig.ok("AddPortMapping", add_args())
    assert len(events.sender.sent) == 1


def test_other_services_hear_only_their_own_variables(events: Events) -> None:
    events.subscribe(COMMON)
    assert events.sender.values() == {"PhysicalLinkStatus": "Up"}
    events.sender.answer()
    events.rig.ok("AddPortMapping", add_args())
    assert len(events.sender.sent) == 1
    events.rig.service.set_external_address(None)
    events.rig.reactor.advance(0)
    assert events.sender.values() == {"PhysicalLinkStatus": "Down"}
    events.subscribe(Service.LAYER3_FORWARDING)
    assert events.sender.values()["DefaultConnectionService"].endswith(
        "WANConnectionDevice:2,urn:upnp-org:serviceId:WANIPConn1"
    )
    events.subscribe(Service.WAN_IPV6_FIREWALL_CONTROL)
    assert events.sender.values() == {"FirewallEnabled": "1", "InboundPinholeAllowed": "1"}


def test_a_412_answer_ends_the_subscription(events: Events) -> None:
    sid = events.subscribe()
    events.sender.answer(412)
    assert events.service.subscriptions.get(sid) is None
    events.rig.ok("AddPortMapping", add_args())
    assert len(events.sender.sent) == 1


def test_repeated_failures_end_the_subscription(events: Events) -> None:
    sid = events.subscribe()
    events.sender.sent[0][1].errback(Failure(ConnectionRefusedError()))
    for port in (8080, 8081):
        events.rig.ok("AddPortMapping", add_args(external=port))
        events.sender.answer(500)
    assert events.service.subscriptions.get(sid) is None
    events.rig.ok("AddPortMapping", add_args(external=8082))
    assert len(events.sender.sent) == 3


def test_a_success_resets_the_failure_count(events: Events) -> None:
    sid = events.subscribe()
    events.sender.answer(503)
    for port in (8080, 8081, 8082, 8083):
        events.rig.ok("AddPortMapping", add_args(external=port))
        events.sender.answer(503 if port % 2 else 200)
    assert events.service.subscriptions.get(sid) is not None


def test_subscriptions_expire_without_renewal(events: Events) -> None:
    sid = events.subscribe()
    events.sender.answer()
    events.rig.reactor.advance(1801)
    assert events.service.subscriptions.get(sid) is None
    events.rig.ok("AddPortMapping", add_args())
    assert len(events.sender.sent) == 1


def test_renewal_keeps_the_subscription_and_its_seq(events: Events) -> None:
    sid = events.subscribe()
    events.sender.answer()
    events.rig.reactor.advance(1000)
    renewed = events.service.subscribe(
        IP, {"sid": sid, "timeout": "Second-1800"}, source=SOURCE, local_host="192.168.1.1"
    )
    assert dict(renewed.headers) == {"SID": sid, "TIMEOUT": "Second-1800"}
    events.rig.reactor.advance(1000)
    events.rig.ok("AddPortMapping", add_args())
    assert events.sender.seqs() == [0, 1]


def test_bad_subscribe_and_unsubscribe_requests(events: Events) -> None:
    sid = events.subscribe()
    service = events.service
    both = service.subscribe(
        IP, {"sid": sid, "callback": "<http://x/>"}, source=SOURCE, local_host=""
    )
    assert both.status == 400
    stranger = service.subscribe(
        IP, {"callback": "<http://192.168.1.99/>", "nt": "upnp:event"}, source=SOURCE, local_host=""
    )
    assert stranger.status == 412
    assert service.unsubscribe(IP, {"sid": sid, "nt": "upnp:event"}, source=SOURCE).status == 400
    assert service.unsubscribe(IP, {}, source=SOURCE).status == 412
    assert service.unsubscribe(IP, {"sid": sid}, source=ip_address(OTHER)).status == 412
    assert service.unsubscribe(IP, {"sid": sid}, source=SOURCE).status == 200


def test_stopping_ends_all_subscriptions(events: Events) -> None:
    events.subscribe()
    events.sender.answer()
    events.service.stop()
    events.rig.ok("AddPortMapping", add_args())
    assert len(events.service.subscriptions) == 0
    assert len(events.sender.sent) == 1


# -- the TCP sender --------------------------------------------------------------------------------


def message(*urls: CallbackUrl) -> NotifyMessage:
    return NotifyMessage(urls, "192.168.1.1", "uuid:s", 3, b"<body/>")


URL = CallbackUrl(SOURCE, 6000, "/evt")


def connect(rig: Rig, index: int = -1) -> tuple[object, StringTransport]:
    host, port, factory, timeout, bind = rig.reactor.tcpClients[index]
    assert (host, port, timeout, bind) == (str(SOURCE), 6000, 5.0, ("192.168.1.1", 0))
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_the_sender_posts_one_notify_and_reads_only_the_status(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    result: list[object] = []
    TcpNotifySender(rig.reactor)(message(URL)).addBoth(result.append)
    protocol, transport = connect(rig)
    assert transport.value().startswith(b"NOTIFY /evt HTTP/1.1\r\nHOST: 192.168.1.10:6000\r\n")
    assert transport.value().endswith(b"\r\n\r\n<body/>")
    protocol.dataReceived(b"HTTP/1.1 301 Moved\r\nLocation: http://198.51.100.1/\r\n\r\n")  # type: ignore[attr-defined]
    assert result == [301]  # the redirect is reported, never followed
    assert transport.disconnecting
    assert len(rig.reactor.tcpClients) == 1


def test_the_sender_tries_the_next_url_when_one_refuses(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    second = CallbackUrl(SOURCE, 6000, "/second")
    result: list[object] = []
    TcpNotifySender(rig.reactor)(message(URL, second)).addBoth(result.append)
    factory = rig.reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    protocol, transport = connect(rig, 1)
    assert transport.value().startswith(b"NOTIFY /second ")
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")  # type: ignore[attr-defined]
    assert result == [200]


def test_the_sender_gives_up_when_no_url_connects(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    result: list[object] = []
    TcpNotifySender(rig.reactor)(message(URL)).addBoth(result.append)
    rig.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert isinstance(result[0], Failure) and result[0].check(ConnectionRefusedError)


def test_the_sender_times_out_a_silent_subscriber(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    result: list[object] = []
    TcpNotifySender(rig.reactor)(message(URL)).addBoth(result.append)
    _, transport = connect(rig)
    rig.reactor.advance(5.1)
    assert isinstance(result[0], Failure) and result[0].check(TimeoutError)
    assert transport.disconnecting


@pytest.mark.parametrize("reply", [b"garbage\r\n", b"x" * 2000])
def test_the_sender_refuses_a_garbage_answer(tmp_path: Path, reply: bytes) -> None:
    rig = Rig(tmp_path)
    result: list[object] = []
    TcpNotifySender(rig.reactor)(message(URL)).addBoth(result.append)
    protocol, transport = connect(rig)
    protocol.dataReceived(reply)  # type: ignore[attr-defined]
    assert isinstance(result[0], Failure)
    assert transport.disconnecting
