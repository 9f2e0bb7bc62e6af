"""vaeforge's built-in plugins. Each module uses only :mod:`vaeforge.api` and is declared as an entry point."""
