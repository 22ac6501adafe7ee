"""Tiny ASGI applications that tests start by import string (``tests.apps.simple:hello``)."""
