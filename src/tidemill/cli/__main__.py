"""``python -m tidemill.cli``: the same as the ``tidemill`` command."""

from tidemill.cli.console import main

main()
