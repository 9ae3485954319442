"""`landmarks` subcommands that run server-side code (`serve`, `bench`); the client commands live in
landmarks/commands/."""
