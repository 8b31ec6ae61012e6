"""The AP's upgrade agent (docs/protocols.md, "Push deployment"): the package registry, the user's prompt policy and
the agent that takes a publish server's notices (plain SMS, WAP Push, IP push) or checks actively, then
authenticates, downloads, verifies, installs and reports a JSR-118 status code."""
