"""Benchmarks: portgate and miniupnpd side by side in network-namespace labs."""
