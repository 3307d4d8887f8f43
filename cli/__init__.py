"""The ``omnifield`` command line (``omnifield.cli.main:main``): thin wrappers over library functions."""
