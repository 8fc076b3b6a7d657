"""``python -m edgeagent``: the same as the ``edgeagent`` console script."""

from edgeagent.cli.entry import main

if __name__ == "__main__":
    main()
