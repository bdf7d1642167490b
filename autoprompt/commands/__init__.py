"""One module per CLI subcommand: ``HELP``, ``DESCRIPTION``, ``configure(parser)``, ``run(args) -> int``."""
