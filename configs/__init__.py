"""The shipped configs, installed as package data ``salt.configs`` (``salt demo`` reads
``demo/*.yaml`` and ``probe/tiny.yaml`` from here)."""
