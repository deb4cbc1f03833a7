"""The ``tidemill`` command line (Typer + Rich) over :mod:`tidemill.client`."""
