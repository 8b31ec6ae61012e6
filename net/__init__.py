"""The packet world (docs/architecture.md): the CP's own IPv4/ICMP/UDP/TCP stack (sans-IO codecs and state machines
with thin trio adapters; CN101594614A embodiment 1), PPP, the radio and Wi-Fi link models, the packet gateway, and the
simulated SMSC."""
