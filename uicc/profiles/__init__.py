"""The built-in card profiles that `--profile NAME` selects (bipsim.uicc.profile.load_profile): one TOML file each,
overriding uicc/default_profile.toml. docs/protocols.md, "OMAPI and the ARA-M on the card", lists them."""
