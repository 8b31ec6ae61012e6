"""The AP's SIM data sync (docs/protocols.md, "SIM data sync"): contacts and messages of the physical SIMs, the
virtual SIMs, the terminal's own store and the sync server kept in step by a three-way merge (`merge`)."""
