"""One module per `bipsim` subcommand (see bipsim.cli.COMMANDS): option parsing and process wiring only."""
