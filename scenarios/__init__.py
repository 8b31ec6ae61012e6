"""Runnable scenarios: both patent embodiments, link modes, failures and the hardware-in-loop bench."""
