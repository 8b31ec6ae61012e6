"""The CP's own TCP/IP stack (CN101594614A embodiment 1; docs/protocols.md, "The packet data plane"): sans-IO IPv4,
ICMP, UDP and TCP codecs and state machines with thin trio adapters. It is the modem's, so it lives under cp/."""
