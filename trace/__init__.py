"""Trace events (PROTOCOL.md section 4): recording, reading, pcap export, ladder rendering and replay."""
