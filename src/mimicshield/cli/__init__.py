"""The ``mimicshield`` command line: one module per subcommand."""
