"""`bench` subcommands, one module each (see bench.cli)."""
