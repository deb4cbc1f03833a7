"""``python -m tidemill`` is the ``tidemill`` command."""

from tidemill.cli.console import main

main()
