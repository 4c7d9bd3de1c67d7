"""`python -m medvlm` runs the CLI."""

from .cli import main

main()
