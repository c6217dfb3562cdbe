"""The mechgrok command line (typer). A thin layer: it parses, calls the library and prints with rich."""
