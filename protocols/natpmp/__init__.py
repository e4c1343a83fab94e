"""NAT-PMP (RFC 6886): ``codec`` (pure bytes <-> values) and ``handler`` (requests to the
gateway). The UDP 5351 socket that feeds it is ``protocols.udp5351``."""
