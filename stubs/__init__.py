"""Stub backends: fast fake servers whose behaviour can be changed live."""
