"""The AP's Local Profile Assistant (docs/protocols.md, "eUICC and the cloud backup"): the LPA of GSMA SGP.22 that
downloads a profile from an SM-DP+ over ES9+, installs it on the eUICC over ES10 (through the CP's AT+CCHO/+CGLA),
and keeps a copy of the bound profile package in a cloud store as text records (`records`) so an interrupted install
is retried from the cloud rather than by a second download."""
