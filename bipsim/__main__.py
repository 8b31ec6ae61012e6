"""`python -m bipsim` is the `bipsim` command."""

from bipsim.cli import main

if __name__ == "__main__":
    main()
