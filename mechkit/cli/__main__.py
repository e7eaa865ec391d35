"""`python -m mechkit.cli`: the same as the `mechkit` command."""

from mechkit.cli import main

main()
