"""The nftables backend: mappings as elements of maps and sets in a table of our own."""
