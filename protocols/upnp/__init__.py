"""UPnP IGD front-end (protocols.md §1-§4): discovery, description, control, eventing.

Pure parts (no Twisted): ``ssdp`` (the SSDP codec), ``description`` (device tree, SCPDs, the
per-client IGD:1/IGD:2 view), ``soap`` (the only XML parser; envelopes and faults) and the
argument parsing of ``actions``. Twisted shells: ``ssdp_server`` (multicast), ``http`` (the web
resources and ``UpnpFrontEnd``, what the daemon builds) and the NOTIFY sender of ``gena``.
"""
