"""Trace events (docs/protocols.md, "Traces"): recording, reading, pcap export, ladder rendering and replay."""
