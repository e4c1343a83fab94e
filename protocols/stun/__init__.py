"""STUN (RFC 8489, formerly RFC 5389) as the gateway uses it: a Binding request to a STUN
server on the Internet, to learn the address the Internet sees us at (is the WAN behind another
NAT?). ``codec`` (pure bytes <-> values) and ``client`` (one transaction over UDP, with
retransmissions, on the Twisted reactor). The daemon wires the client to
``gateway.reachability``; nothing here serves STUN."""
