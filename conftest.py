# The course's pytest plugin: --impl switch, markers, device parametrisation.
pytest_plugins = ["coursekit.pytest_plugin"]
