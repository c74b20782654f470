"""One module per `sdpo` subcommand: ARGUMENTS (a dataclass) and run(args)."""
