"""Errors a user can act on: one line naming the file, layer, field or value at fault."""


class LavaconvError(Exception):
    """A problem with the user's input (model, data, profile, options); exit code 2."""
