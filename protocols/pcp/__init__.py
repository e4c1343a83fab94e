"""PCP (RFC 6887, with RFC 7220's DESCRIPTION): ``codec`` and ``options`` (pure bytes <-> values)
and ``handler`` (requests to the gateway, Mapping Updates). The UDP 5351 socket that feeds it is
``protocols.udp5351``."""
