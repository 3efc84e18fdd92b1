# The toolkit's pytest plugin: the ``backend`` fixture and ComponentChecks (toolkit/testing.py).
pytest_plugins = ["toolkit.testing"]
