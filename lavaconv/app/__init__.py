"""The application: the command line, its commands, deploy, the Python API and the reports."""
